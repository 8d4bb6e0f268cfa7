package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/mailbox"
)

// UserRequest is the admin API's request for the user operations.
type UserRequest struct {
	Address  string `json:"address"`
	Password string `json:"password,omitempty"`
	Force    bool   `json:"force,omitempty"`
}

// MinPassword is the shortest password `relay user` accepts, in characters.
// Accounts are reachable over SMTP AUTH and IMAP from the network, where
// short passwords fall to guessing despite the throttle.
const MinPassword = 8

// UserOp runs one `relay user` verb on a mailbox store; the CLI calls it
// directly when no server runs, the admin API when one does. domains are the
// local domains, which an added address must be in unless req.Force.
func UserOp(boxes *mailbox.Store, domains []string, verb string, req UserRequest) (any, error) {
	if verb == "add" || verb == "passwd" {
		if n := utf8.RuneCountInString(req.Password); n < MinPassword {
			return nil, admin.UserError(fmt.Errorf("the password is too short (%d characters): use at least %d", n, MinPassword))
		}
	}
	if verb == "add" && !req.Force {
		if err := checkLocal(req.Address, domains); err != nil {
			return nil, admin.UserError(err)
		}
	}
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

// checkLocal refuses an account outside the local domains: mail to it
// would never arrive, since the relay routes such mail elsewhere.
func checkLocal(address string, domains []string) error {
	at := strings.LastIndexByte(address, '@')
	if at < 0 {
		return nil // AddUser says what is wrong with it
	}
	d := strings.ToLower(address[at+1:])
	if slices.ContainsFunc(domains, func(l string) bool { return strings.EqualFold(l, d) }) {
		return nil
	}
	return fmt.Errorf("%s is not a local domain (the local domains are %s), so no mail would reach %s: "+
		"add it to relay serve with --domain %s (or the domain setting), or pass --force",
		d, strings.Join(domains, ", "), address, d)
}

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
			return UserOp(s.boxes, s.cfg.Domains, verb, req)
		})
	}
}
