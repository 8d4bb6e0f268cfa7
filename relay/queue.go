package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

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

// ListQueue returns every queued message; never nil, so JSON says [].
func ListQueue(sp *spool.Spool) ([]*spool.Message, error) {
	ms, err := sp.List()
	if ms == nil {
		ms = []*spool.Message{}
	}
	return ms, err
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

// QueueOp runs a queue verb on each ID; the first unknown ID is reported
// after the others are done, so one typo does not stop a batch. bounce is
// nil when no delivery loop runs (the database opened directly): a bounce
// needs the loop to write the notice.
func QueueOp(sp *spool.Spool, bounce func(string) error, verb string, ids []string) error {
	var op func(string) error
	switch verb {
	case "flush":
		op = sp.Flush
		if len(ids) == 0 {
			_, err := sp.FlushAll()
			return err
		}
	case "hold":
		op = sp.Hold
	case "release":
		op = sp.Release
	case "delete":
		op = sp.Delete
	case "bounce":
		if bounce == nil {
			return admin.UserError(errors.New("queue bounce needs the running server (it sends the notices): start relay serve"))
		}
		op = bounce
	default:
		return admin.UserError(fmt.Errorf("unknown queue verb %q", verb))
	}
	var missing error
	for _, id := range ids {
		err := op(id)
		if errors.Is(err, spool.ErrNotFound) {
			if missing == nil {
				missing = admin.NotFound(err)
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return missing
}

func (s *Server) registerAdmin() {
	s.registerUserOps()
	for _, verb := range []string{"flush", "hold", "release", "delete", "bounce"} {
		s.admin.Handle("queue/"+verb, func(_ context.Context, raw json.RawMessage) (any, error) {
			var req IDsRequest
			if err := json.Unmarshal(raw, &req); err != nil {
				return nil, admin.UserError(fmt.Errorf("bad request: %w", err))
			}
			err := QueueOp(s.spool, s.loop.Bounce, verb, req.IDs)
			if verb == "flush" {
				s.loop.Kick()
			}
			return struct{}{}, err
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
	s.admin.Handle("queue/list", func(context.Context, json.RawMessage) (any, error) {
		return ListQueue(s.spool)
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
