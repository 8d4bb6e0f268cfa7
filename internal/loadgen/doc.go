// Package loadgen generates SMTP and IMAP load for relay-bench: concurrent
// SMTP sessions with or without pipelining (RFC 2920), IMAP clients that run
// a mix of mailbox operations, mailbox filling by APPEND, and the waits that
// turn an SMTP run into an end-to-end figure (until every message is
// readable over IMAP or present in a Maildir).
//
// The SMTP client is written directly on a net.Conn so that it can pipeline;
// the IMAP side uses go-imap's imapclient. Every runner returns a Summary,
// which prints as text or as one JSON object.
package loadgen
