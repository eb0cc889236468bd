"""The reads of one local delivery, planned ahead so that they go to the DB together
(db.Batch): qmail-getpw's (the virtual step's hosts and rows, the candidates' mailbox
rows) and those of the `local` and `localq` questions the qmail-local wrapper asks
next for whichever candidate getpw takes (its alias rows, its quota). The reads are
exactly the ones the lookups make (the same builders): planning never changes an
answer, a read planned in vain costs only its share of the statement, one not
planned is asked on its own. A virtual row's target is known only from the rows: its
reads are planned once it is (Resolver's AHEAD), a second round trip. Not planned:
the alias user's reads (its `-default` level can be large, and it is asked only for
mail nobody else takes)."""
from qmailsql.core import aliases, quota, virtual
from qmailsql.core.db import mailbox_read
from qmailsql.core.hotpath import candidates
from qmailsql.core.resolve import mailbox_names


def delivery_reads(config, local):
    """The reads (each a tuple of db.Part) of a delivery to LOCAL (bytes), in the order
    the lookups ask them: the virtual step's, then local_reads()."""
    pairs = virtual.splits(local)
    reads = [virtual.hosts_read(pairs, config.funky_queries)] if pairs else []
    return reads + local_reads(config, local)


def local_reads(config, local):
    """The reads of getpw's mailbox step for LOCAL (bytes; a virtual row's target too)
    and of the `local`/`localq` answers for each of its candidates."""
    cands = candidates(local, config.auto_break, config.userlen)
    reads = [mailbox_read(mailbox_names(cands))]
    for cand, dash, ext in cands:
        args = aliases.fetch_args(cand, dash, ext)
        if args is not None:
            reads += [aliases.rows_read(*args), quota.limits_read(args[0])]
    return reads
