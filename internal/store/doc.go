// Package store is the storage seam's neutral ground: the errors every
// engine maps its own to (not found, conflict, too big, no space,
// unavailable, lease lost) and the one retry of conflicts. What spool and
// mailbox need from storage they declare themselves (spool.Backend,
// mailbox.Backend); the engines that provide it live below: badger (embedded,
// one node) and postgres (several nodes sharing one database). Only the
// server's wiring knows which one runs.
package store
