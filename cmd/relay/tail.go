package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/relay"
	"github.com/relaymail/relay/spool"
)

// tail prints the mail log's events, like `tail [-n N] [-f] maillog`. Past
// events come from the database when no server runs; following needs one.
func tail(ctx context.Context, dir where, req relay.TailRequest, asJSON bool, w io.Writer) error {
	if req.N < 0 {
		return usagef("queue tail: -n must not be negative")
	}
	print := func(ev spool.Event) error {
		if asJSON {
			return json.NewEncoder(w).Encode(ev)
		}
		_, err := fmt.Fprintln(w, formatEvent(ev))
		return err
	}
	return withSpool(dir,
		func(c *admin.Client) error {
			r, err := c.Stream(ctx, "queue/tail", req)
			if err != nil {
				return err
			}
			defer r.Close()
			return readStream(r, "queue tail", print)
		},
		func(sp *spool.Spool) error {
			// On a shared PostgreSQL store the log of every node can be
			// followed straight from the database; Badger's followers
			// need the server that holds it.
			if req.Follow && !relay.IsPostgres(dir.store) {
				return errors.New("queue tail -f follows a running server, and none answers: start relay serve, or drop -f")
			}
			return sp.Tail(ctx, req.N, req.Follow, print)
		})
}

// readStream decodes an admin stream for cmd: one JSON value per line, or a
// last line that carries the error which ended it.
func readStream[T any](r io.Reader, cmd string, fn func(T) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		// The server writes an error as an object with that one key;
		// events and envelopes start with keys of their own.
		if bytes.HasPrefix(sc.Bytes(), []byte(`{"error":`)) {
			var end struct {
				Error string `json:"error"`
			}
			if err := json.Unmarshal(sc.Bytes(), &end); err != nil {
				return fmt.Errorf("%s: bad line from the server: %w", cmd, err)
			}
			return errors.New(end.Error)
		}
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return fmt.Errorf("%s: bad line from the server: %w", cmd, err)
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	return sc.Err()
}

// formatEvent renders an event as one mail-log style line:
// TIME ID EVENT key=value...
func formatEvent(ev spool.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", ev.Time.Local().Format("2006-01-02T15:04:05.000"), ev.ID, ev.Event)
	kv := func(k, v string) {
		if v != "" {
			if strings.ContainsAny(v, " \"=") {
				v = fmt.Sprintf("%q", v)
			}
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	if ev.Event == spool.EventAccepted {
		from := ev.From
		if from == "" {
			from = "<>"
		}
		kv("from", from)
		kv("rcpts", strings.Join(ev.Rcpts, ","))
		kv("size", fmt.Sprint(ev.Size))
		kv("client", ev.Client)
	}
	kv("rcpt", ev.Rcpt)
	if ev.Attempt > 0 {
		kv("attempt", fmt.Sprint(ev.Attempt))
	}
	kv("relay", ev.Relay)
	if ev.Delay > 0 {
		kv("delay", fmt.Sprintf("%.3fs", ev.Delay))
	}
	kv("status", ev.Status)
	if !ev.Next.IsZero() {
		kv("next", ev.Next.Local().Format(time.RFC3339))
	}
	if ev.Operator {
		kv("by", "operator")
	}
	return b.String()
}
