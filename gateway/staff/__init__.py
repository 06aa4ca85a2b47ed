"""The staff room: what a staff member's mail does to a case.

It owns reading a staff reply written in an ordinary mail client (reply.py: the commands `#close`,
`#open`, `#category NAME`, `#note` on the first lines; quotes.py: cutting off the quoted
notification under English and Polish quote headers) and applying it inside the pipeline's
transaction (answer.py: an internal note, an answer sent to the customer, the case's new status).
It may import gateway.record (the rows), gateway.outbound (which mail to send), gateway.parse's
values and store; never the pipeline, the edges (smtp, imap, panel, http) or the wiring.
"""
