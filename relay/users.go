package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/mailbox"
)

// UserRequest is the admin API's request for the user operations.
type UserRequest struct {
	Address  string `json:"address"`
	Password string `json:"password,omitempty"`
	Force    bool   `json:"force,omitempty"`
}

// UserOp runs one `relay user` verb on a mailbox store; the CLI calls it
// directly when no server runs, the admin API when one does.
func UserOp(boxes *mailbox.Store, verb string, req UserRequest) (any, error) {
	var err error
	switch verb {
	case "add":
		err = boxes.AddUser(req.Address, req.Password)
	case "passwd":
		err = boxes.SetPassword(req.Address, req.Password)
	case "del":
		err = boxes.DeleteUser(req.Address, req.Force)
	case "list":
		return boxes.ListUsers()
	default:
		return nil, admin.UserError(fmt.Errorf("unknown user verb %q", verb))
	}
	return struct{}{}, userError(err)
}

// userError gives store errors the kind the CLI turns into exit status 1.
func userError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mailbox.ErrNoUser):
		return admin.NotFound(err)
	case errors.Is(err, mailbox.ErrUserExists), errors.Is(err, mailbox.ErrHasMail),
		errors.Is(err, mailbox.ErrBadAddress), errors.Is(err, mailbox.ErrBadPassword):
		return admin.UserError(err)
	}
	return err
}

func (s *Server) registerUserOps() {
	for _, verb := range []string{"add", "passwd", "del", "list"} {
		s.admin.Handle("user/"+verb, func(_ context.Context, raw json.RawMessage) (any, error) {
			var req UserRequest
			if err := json.Unmarshal(raw, &req); err != nil {
				return nil, admin.UserError(fmt.Errorf("bad request: %w", err))
			}
			return UserOp(s.boxes, verb, req)
		})
	}
}
