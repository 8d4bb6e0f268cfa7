package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/spool"
)

// Shown is what `relay queue show` prints: the envelope, the header section,
// and the body when asked for.
type Shown struct {
	*spool.Message
	// History is the message's events in the mail log, oldest first.
	History []spool.Event `json:"history"`
	Headers string        `json:"headers"`
	Body    string        `json:"body,omitempty"`
}

// ListRequest selects what `relay queue list` shows; the zero value is the
// whole queue.
type ListRequest struct {
	// Limit stops the listing after this many messages (0: no limit).
	Limit int `json:"limit,omitempty"`
	// State keeps messages with a recipient in this state (RcptState).
	State string `json:"state,omitempty"`
	// Domain keeps messages with a recipient in this domain.
	Domain string `json:"domain,omitempty"`
	// OlderThan keeps messages that arrived at least this long ago.
	OlderThan time.Duration `json:"older_than,omitempty"`
}

// ListStates are the states a listing names and --state selects.
var ListStates = []string{"due", "deferred", "held", "delivered", "failed"}

// Check refuses a request that could only list nothing by mistake.
func (r ListRequest) Check() error {
	switch {
	case r.Limit < 0:
		return admin.UserError(errors.New("--limit must not be negative"))
	case r.OlderThan < 0:
		return admin.UserError(errors.New("--older-than must not be negative"))
	case r.State != "" && !slices.Contains(ListStates, r.State):
		return admin.UserError(fmt.Errorf("--state %q: want one of %s", r.State, strings.Join(ListStates, ", ")))
	case strings.Contains(r.Domain, "@"):
		return admin.UserError(fmt.Errorf("--domain %q: give the domain alone, without a local part", r.Domain))
	}
	return nil
}

// RcptState names recipient r of m as an operator reads the queue at now:
// held (its message is held), due (pending, and new or past its retry
// time), deferred (tried, waiting for its next attempt; Reply says why),
// delivered or failed.
func RcptState(m *spool.Message, r *spool.Recipient, now time.Time) string {
	switch {
	case r.State != spool.Pending:
		return string(r.State)
	case m.Hold:
		return "held"
	case r.Attempts > 0 && r.NextAttempt.After(now):
		return "deferred"
	default:
		return "due"
	}
}

// matches reports whether req selects m at now.
func (r ListRequest) matches(m *spool.Message, now time.Time) bool {
	if r.OlderThan > 0 && now.Sub(m.Arrived) < r.OlderThan {
		return false
	}
	if r.State == "" && r.Domain == "" {
		return true
	}
	for i := range m.Rcpts {
		rc := &m.Rcpts[i]
		if r.State != "" && RcptState(m, rc, now) != r.State {
			continue
		}
		if r.Domain != "" {
			at := strings.LastIndexByte(rc.Address, '@')
			if at < 0 || !strings.EqualFold(strings.TrimSuffix(rc.Address[at+1:], "."), strings.TrimSuffix(r.Domain, ".")) {
				continue
			}
		}
		return true
	}
	return false
}

// errListDone ends a listing at its limit.
var errListDone = errors.New("listing limit reached")

// ListQueue calls fn for each queued message that req selects at now, in
// arrival order, until req.Limit. It reads the store a page at a time and
// keeps nothing, so that listing a queue of a million messages takes no
// more memory than listing ten.
func ListQueue(sp *spool.Spool, req ListRequest, now time.Time, fn func(*spool.Message) error) error {
	if err := req.Check(); err != nil {
		return err
	}
	n := 0
	err := sp.Each(func(m *spool.Message) error {
		if !req.matches(m, now) {
			return nil
		}
		if err := fn(m); err != nil {
			return err
		}
		n++
		if req.Limit > 0 && n >= req.Limit {
			return errListDone
		}
		return nil
	})
	if errors.Is(err, errListDone) {
		return nil
	}
	return err
}

// ShowMessage returns message id with its header section (and its body when
// body is set).
func ShowMessage(sp *spool.Spool, id string, body bool) (*Shown, error) {
	m, err := sp.Get(id)
	if err != nil {
		return nil, err
	}
	r, err := sp.Body(id)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(r)
	var hdr strings.Builder
	for {
		line, err := br.ReadString('\n')
		hdr.WriteString(line)
		if err != nil || line == "\r\n" || line == "\n" {
			break
		}
	}
	hist, err := sp.History(id)
	if err != nil {
		return nil, err
	}
	sh := &Shown{Message: m, History: hist, Headers: hdr.String()}
	if body {
		b, err := io.ReadAll(br)
		if err != nil {
			return nil, fmt.Errorf("read body of %s: %w", id, err)
		}
		sh.Body = string(b)
	}
	return sh, nil
}

// Status is what a running server says of itself (admin "status").
type Status struct {
	Engine   string `json:"engine"`
	Node     string `json:"node,omitempty"`
	Hostname string `json:"hostname"`
}

// ShowRequest asks for one message.
type ShowRequest struct {
	ID   string `json:"id"`
	Body bool   `json:"body,omitempty"`
}

// IDsRequest names messages; an empty list means all (flush only).
type IDsRequest struct {
	IDs []string `json:"ids"`
}

// TailRequest asks for the last N events and, with Follow, the ones after.
type TailRequest struct {
	N      int  `json:"n"`
	Follow bool `json:"follow,omitempty"`
}

// OpReply is what a queue verb did.
type OpReply struct {
	// Done counts the messages it changed.
	Done int `json:"done"`
}

// QueueOp runs a queue verb on each ID and returns how many it found; the
// first unknown ID is reported after the others are done, so one typo does
// not stop a batch. bounce is nil when no delivery loop runs (the database
// opened directly): a bounce needs the loop to write the notice.
func QueueOp(sp *spool.Spool, bounce func(string) error, verb string, ids []string) (int, error) {
	var op func(string) error
	switch verb {
	case "flush":
		op = sp.Flush
		if len(ids) == 0 {
			return sp.FlushAll()
		}
	case "hold":
		op = sp.Hold
	case "release":
		op = sp.Release
	case "delete":
		op = sp.Delete
	case "bounce":
		if bounce == nil {
			return 0, admin.UserError(errors.New("queue bounce needs the running server (it sends the notices): start relay serve"))
		}
		op = bounce
	default:
		return 0, admin.UserError(fmt.Errorf("unknown queue verb %q", verb))
	}
	var missing error
	done := 0
	for _, id := range ids {
		err := op(id)
		if errors.Is(err, spool.ErrNotFound) {
			if missing == nil {
				missing = admin.NotFound(err)
			}
			continue
		}
		if err != nil {
			return done, err
		}
		done++
	}
	return done, missing
}

func (s *Server) registerAdmin() {
	s.registerUserOps()
	for _, verb := range []string{"flush", "hold", "release", "delete", "bounce"} {
		s.admin.Handle("queue/"+verb, func(_ context.Context, raw json.RawMessage) (any, error) {
			var req IDsRequest
			if err := json.Unmarshal(raw, &req); err != nil {
				return nil, admin.UserError(fmt.Errorf("bad request: %w", err))
			}
			done, err := QueueOp(s.spool, s.loop.Bounce, verb, req.IDs)
			if verb == "flush" {
				s.loop.Kick()
			}
			return OpReply{Done: done}, err
		})
	}
	s.admin.HandleStream("queue/tail", func(ctx context.Context, raw json.RawMessage, w io.Writer) error {
		var req TailRequest
		if err := json.Unmarshal(raw, &req); err != nil {
			return admin.UserError(fmt.Errorf("bad request: %w", err))
		}
		enc := json.NewEncoder(w)
		return s.spool.Tail(ctx, req.N, req.Follow, func(ev spool.Event) error { return enc.Encode(ev) })
	})
	s.admin.HandleUpload("sendmail", s.sendmail)
	s.admin.Handle("status", func(context.Context, json.RawMessage) (any, error) {
		st := Status{Engine: s.store.EngineName(), Hostname: s.cfg.Hostname}
		if s.store.Postgres != nil {
			st.Node = s.store.Postgres.Node()
		}
		return st, nil
	})
	s.admin.HandleStream("store/backup", func(ctx context.Context, _ json.RawMessage, w io.Writer) error {
		return Backup(ctx, s.store, w)
	})
	s.admin.HandleStream("queue/list", func(ctx context.Context, raw json.RawMessage, w io.Writer) error {
		var req ListRequest
		if err := json.Unmarshal(raw, &req); err != nil {
			return admin.UserError(fmt.Errorf("bad request: %w", err))
		}
		// One JSON envelope per line, written in blocks rather than
		// flushed one by one.
		bw := bufio.NewWriterSize(w, 64<<10)
		enc := json.NewEncoder(bw)
		err := ListQueue(s.spool, req, s.spool.Now(), func(m *spool.Message) error {
			if ctx.Err() != nil {
				return ctx.Err() // the client went away
			}
			return enc.Encode(m)
		})
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
		return err
	})
	s.admin.Handle("queue/show", func(_ context.Context, raw json.RawMessage) (any, error) {
		var req ShowRequest
		if err := json.Unmarshal(raw, &req); err != nil {
			return nil, admin.UserError(fmt.Errorf("bad request: %w", err))
		}
		sh, err := ShowMessage(s.spool, req.ID, req.Body)
		if errors.Is(err, spool.ErrNotFound) {
			return nil, admin.NotFound(err)
		}
		return sh, err
	})
}
