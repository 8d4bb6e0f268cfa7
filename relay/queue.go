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
	Headers string `json:"headers"`
	Body    string `json:"body,omitempty"`
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
	sh := &Shown{Message: m, Headers: hdr.String()}
	if body {
		b, err := io.ReadAll(br)
		if err != nil {
			return nil, fmt.Errorf("read body of %s: %w", id, err)
		}
		sh.Body = string(b)
	}
	return sh, nil
}

// ShowRequest asks for one message.
type ShowRequest struct {
	ID   string `json:"id"`
	Body bool   `json:"body,omitempty"`
}

func (s *Server) registerAdmin() {
	s.registerUserOps()
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
