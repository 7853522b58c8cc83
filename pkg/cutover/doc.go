// Package cutover moves one compute host between the stock shape (nova-compute
// alone on Nova's control exchange) and companion mode (DESIGN §2: ferryd takes
// the host's compute traffic, nova-compute runs on a private exchange of its
// own), without a Nova patch and without losing a message.
//
// Plan is pure: a direction and the host's facts give the ordered steps, which
// `ferryd cutover --dry-run` prints. An Executor runs them against four small
// interfaces (the broker's topology, its policies, a command runner, an INI
// editor), so the order and each step's idempotence are unit-tested with
// fakes. Every step converges when it is run again after a crash part-way: a
// binding already gone, a queue already empty or missing, a policy already
// cleared are each fine.
//
// Two rules shape the order. A queue is bound before the other is unbound, so
// no publish finds no queue (Nova's casts are not mandatory: an unroutable one
// is lost silently); what is published in that window lands in both, and is
// dropped once by its _unique_id (Move skips an id already waiting in its
// target; ferryd's forwarder and oslo's listener drop a repeat). And a queue's
// backlog is moved only while it has no consumer: the step refuses, naming the
// process that still consumes it.
package cutover
