package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	storebadger "github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/mailbox"
)

// userRun is one data directory that `relay user` commands run on, straight
// on the database (srv nil) or through a running server's admin socket.
type userRun struct {
	t    *testing.T
	data string
	srv  *server
}

// user runs `relay user ARGS --data DIR` with stdin.
func (u userRun) user(stdin string, args ...string) result {
	u.t.Helper()
	return runRelayStdin(u.t, stdin, nil, append(append([]string{"user"}, args...), "--data", u.data)...)
}

// want runs a user command and fails unless it exits with code and its
// stdout and stderr contain the given substrings.
func (u userRun) want(stdin string, code int, stdout, stderr string, args ...string) result {
	u.t.Helper()
	res := u.user(stdin, args...)
	if res.code != code || !strings.Contains(res.stdout, stdout) || !strings.Contains(res.stderr, stderr) {
		u.t.Errorf("relay user %s: %s\nwant exit %d, stdout with %q, stderr with %q", strings.Join(args, " "), res, code, stdout, stderr)
	}
	return res
}

// userInfo is one element of `relay user list --json`.
type userInfo struct {
	Address  string    `json:"address"`
	Created  time.Time `json:"created"`
	Messages int       `json:"messages"`
	Size     int64     `json:"size"`
}

// list runs `relay user list --json` and checks that it prints an array.
func (u userRun) list() []userInfo {
	u.t.Helper()
	res := u.want("", 0, "", "", "list", "--json")
	var users []userInfo
	if err := json.Unmarshal([]byte(res.stdout), &users); err != nil || users == nil {
		u.t.Fatalf("user list --json: want a JSON array, got %q (%v)", res.stdout, err)
	}
	return users
}

// wantUsers fails unless `relay user list --json` names exactly addrs.
func (u userRun) wantUsers(addrs ...string) []userInfo {
	u.t.Helper()
	users := u.list()
	var got []string
	for _, x := range users {
		got = append(got, x.Address)
	}
	if !slices.Equal(got, addrs) {
		u.t.Fatalf("user list --json names %q, want %q", got, addrs)
	}
	return users
}

// authAs tries AUTH PLAIN on srv's submission port and returns the error
// (nil for 235).
func authAs(t *testing.T, srv *server, user, password string) error {
	t.Helper()
	c := srv.dialAddr(t, srv.addrs["submission"])
	defer c.Close()
	return c.Auth(sasl.NewPlainClient("", user, password))
}

// wantPassword checks on a running server that password logs user in and
// wrong does not (535 5.7.8).
func wantPassword(t *testing.T, srv *server, user, password, wrong string) {
	t.Helper()
	if err := authAs(t, srv, user, password); err != nil {
		t.Errorf("AUTH as %s with the new password: %v", user, err)
	}
	var se *smtp.SMTPError
	if err := authAs(t, srv, user, wrong); !errors.As(err, &se) || se.Code != 535 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 8}) {
		t.Errorf("AUTH as %s with the old password: %v, want 535 5.7.8", user, err)
	}
}

// TestUserCommands runs the life of two accounts with `relay user`, once
// on the database with no server running and once through the admin
// socket of a running one, and checks the server's view where one runs:
// AUTH with the changed password, RCPT for a deleted user.
func TestUserCommands(t *testing.T) {
	t.Parallel()
	for _, running := range []bool{false, true} {
		name := "database"
		if running {
			name = "socket"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			u := userRun{t: t, data: filepath.Join(workDir(t), "data")}
			if running {
				u.srv = startServer(t, u.data, "--submission", "127.0.0.1:0")
			}
			testUserLife(t, u)
			testUserMistakes(t, u)
		})
	}
}

func testUserLife(t *testing.T, u userRun) {
	const alice, bob = "alice@localhost", "bob@localhost"
	if u.srv == nil {
		// Only add (and serve) make a data directory; the others name
		// the one they did not find.
		abs, _ := filepath.Abs(u.data)
		u.want("", 1, "", "no relay data in "+abs, "list", "--json")
		u.want("first-pw\n", 0, "user alice@localhost added", "created the data directory "+abs, "add", alice, "--password-stdin")
	} else {
		u.want("first-pw\n", 0, "user alice@localhost added", "", "add", alice, "--password-stdin")
	}
	if res := u.want("", 0, "", "", "list", "--json"); !strings.Contains(res.stdout, alice) {
		t.Errorf("user list --json after add printed %q, want %s", res.stdout, alice)
	}
	// Flags before the address, the address in mixed case.
	u.want("bob-password\n", 0, "user bob@localhost added", "", "add", "--password-stdin", "Bob@LocalHost")
	u.want("other-pw\n", 1, "", "already exists", "add", "ALICE@localhost", "--password-stdin")

	users := u.wantUsers(alice, bob)
	for _, x := range users {
		if x.Messages != 0 || x.Size != 0 || time.Since(x.Created) > time.Hour || time.Since(x.Created) < 0 {
			t.Errorf("new user %+v: want no messages and a created time of now", x)
		}
	}
	res := u.want("", 0, "ADDRESS", "", "list")
	for _, a := range []string{alice, bob} {
		if !strings.Contains(res.stdout, "\n"+a+" ") {
			t.Errorf("user list does not list %s:\n%s", a, res.stdout)
		}
	}

	u.want("second-pw\n", 0, "password of alice@localhost changed", "", "passwd", alice, "--password-stdin")
	if u.srv != nil {
		wantPassword(t, u.srv, alice, "second-pw", "first-pw")
	} else {
		srv := startServer(t, u.data, "--submission", "127.0.0.1:0")
		wantPassword(t, srv, alice, "second-pw", "first-pw")
		srv.stop()
	}

	giveMail(t, u, alice)
	if got := u.wantUsers(alice, bob)[0]; got.Messages != 1 || got.Size == 0 {
		t.Errorf("after one delivery: %+v, want 1 message with a size", got)
	}
	u.want("", 1, "", "--force", "del", alice)
	u.wantUsers(alice, bob)
	u.want("", 0, "user alice@localhost deleted", "", "del", "--force", alice)
	u.wantUsers(bob)
	if u.srv != nil {
		c := u.srv.dial(t)
		if err := c.Mail("someone@example.net", nil); err != nil {
			t.Fatalf("MAIL: %v", err)
		}
		var se *smtp.SMTPError
		if err := c.Rcpt(alice, nil); !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
			t.Errorf("RCPT TO:<%s> after user del: %v, want 550 5.1.1", alice, err)
		}
		if err := c.Rcpt(bob, nil); err != nil {
			t.Errorf("RCPT TO:<%s>: %v", bob, err)
		}
		if err := authAs(t, u.srv, alice, "second-pw"); !errors.As(err, &se) || se.Code != 535 {
			t.Errorf("AUTH as a deleted user: %v, want 535", err)
		}
	}
	u.want("", 1, "", "no such user", "del", alice)
	u.want("xxxxxxxx\n", 1, "", "no such user", "passwd", "nobody@localhost", "--password-stdin")
	u.want("", 0, "user bob@localhost deleted", "", "del", bob)
	u.wantUsers()
}

// giveMail puts one message into user's INBOX: through the relay port when
// a server runs (and waits for the delivery), else straight into the
// database.
func giveMail(t *testing.T, u userRun, user string) {
	t.Helper()
	msg := crlf("Subject: for " + user + "\n\nhello\n")
	if u.srv != nil {
		u.srv.send(t, "someone@example.net", []string{user}, msg)
		if !waitFor(10*time.Second, func() bool { return u.list()[0].Messages == 1 }) {
			t.Fatalf("the message to %s was not delivered within 10s", user)
		}
		return
	}
	db, err := storebadger.Open(u.data, storebadger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, _, err := mailbox.New(storebadger.New(db, nil), nil).Append(user, "INBOX", strings.NewReader(msg), time.Now(), nil); err != nil {
		t.Fatalf("append to the INBOX of %s: %v", user, err)
	}
}

// testUserMistakes: bad usage exits 2, a refused request exits 1 with what
// to fix, and neither creates anything.
func testUserMistakes(t *testing.T, u userRun) {
	tests := []struct {
		name   string
		stdin  string
		args   []string
		code   int
		stderr string
	}{
		{"unknown verb", "", []string{"frob", "carol@localhost"}, 2, `unknown verb "frob"`},
		{"add without address", "pw\n", []string{"add", "--password-stdin"}, 2, "user add takes one ADDRESS"},
		{"passwd without address", "pw\n", []string{"passwd", "--password-stdin"}, 2, "user passwd takes one ADDRESS"},
		{"del without address", "", []string{"del"}, 2, "user del takes one ADDRESS"},
		{"add two addresses", "pw\n", []string{"add", "carol@localhost", "dave@localhost", "--password-stdin"}, 2, "one ADDRESS"},
		{"list with argument", "", []string{"list", "carol@localhost"}, 2, "no arguments"},
		{"unknown flag", "", []string{"list", "--frob"}, 2, "frob"},
		{"add without terminal", "pw\n", []string{"add", "carol@localhost"}, 1, "--password-stdin"},
		{"passwd without terminal", "pw\n", []string{"passwd", "carol@localhost"}, 1, "--password-stdin"},
		{"add with empty password", "\n", []string{"add", "carol@localhost", "--password-stdin"}, 1, "empty"},
		{"add plus-address", "password\n", []string{"add", "carol+tag@localhost", "--password-stdin"}, 1, "+tag"},
		{"add without domain", "password\n", []string{"add", "carol", "--password-stdin"}, 1, "local@domain"},
		{"add short password", "seven77\n", []string{"add", "carol@localhost", "--password-stdin"}, 1, "too short (7 characters): use at least 8"},
		{"passwd short password", "seven77\n", []string{"passwd", "bob@localhost", "--password-stdin"}, 1, "too short"},
		{"add outside the local domains", "password\n", []string{"add", "carol@example.org", "--password-stdin"}, 1, "example.org is not a local domain (the local domains are localhost)"},
		{"add help", "", []string{"add", "-h"}, 0, "-password-stdin"},
	}
	if res := runRelay(t, nil, "user"); res.code != 2 || !strings.Contains(res.stderr, "a verb is needed") {
		t.Errorf("relay user: %s\nwant exit 2 saying a verb is needed", res)
	}
	for _, tt := range tests {
		u.want(tt.stdin, tt.code, "", tt.stderr, tt.args...)
	}
	u.wantUsers()
	// --force takes an address outside the local domains (a domain the
	// operator is about to add).
	u.want("password\n", 0, "user carol@example.org added", "", "add", "carol@example.org", "--force", "--password-stdin")
	u.want("", 0, "user carol@example.org deleted", "", "del", "carol@example.org")
	u.wantUsers()
}

// ptyScript runs a command (argv[1:]) on a pseudo-terminal, answers its
// "Password: " and "Again: " prompts with $FIRST and $AGAIN, and prints
// everything the terminal showed; it exits with the command's status. With
// $NOWAIT empty it types each answer once the terminal's echo is off, as a
// person who reads the prompt first does; else at once when the prompt shows.
const ptyScript = `
import os, pty, select, sys, termios, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
def expect(s):
    global out
    end = time.time() + 20
    while s not in out:
        r, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not r:
            sys.exit("timeout waiting for %r, got %r" % (s, out))
        try:
            out += os.read(fd, 1024)
        except OSError:
            sys.exit("end of output waiting for %r, got %r" % (s, out))
def answer(prompt, text):
    expect(prompt)
    if not os.environ.get("NOWAIT"):
        # On Linux the master side reads the terminal's modes.
        end = time.time() + 20
        while termios.tcgetattr(fd)[3] & termios.ECHO:
            if time.time() > end:
                sys.exit("echo still on 20s after the prompt %r" % prompt)
            time.sleep(0.005)
    os.write(fd, text + b"\n")
answer(b"Password: ", os.environb[b"FIRST"])
answer(b"Again: ", os.environb[b"AGAIN"])
while True:
    try:
        b = os.read(fd, 1024)
    except OSError:
        break
    if not b:
        break
    out += b
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
`

// promptUser runs `relay user ARGS --data data` on a pseudo-terminal with
// ptyScript and returns what the terminal showed and the exit status.
func promptUser(t *testing.T, python, data string, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(python, append([]string{"-c", ptyScript, relayBinary(t), "user"}, append(args, "--data", data)...)...)
	cmd.Env = testEnv(env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("python3: %v\n%s", err, out)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// TestUserPasswordPrompt: without --password-stdin on a terminal, `relay
// user add` asks twice without echo (python3's pty module plays the
// terminal), and the password works for AUTH on the running server.
func TestUserPasswordPrompt(t *testing.T) {
	t.Parallel()
	python := needTool(t, "python3")
	data := filepath.Join(workDir(t), "data")
	srv := startServer(t, data, "--submission", "127.0.0.1:0")
	out, code := promptUser(t, python, data, []string{"FIRST=typed-secret", "AGAIN=typed-secret"}, "add", "carol@localhost")
	if code != 0 || !strings.Contains(out, "user carol@localhost added") {
		t.Fatalf("user add on a terminal: exit %d\n%s", code, out)
	}
	if strings.Contains(out, "typed-secret") {
		t.Errorf("the password was echoed:\n%s", out)
	}
	if err := authAs(t, srv, "carol@localhost", "typed-secret"); err != nil {
		t.Errorf("AUTH with the password typed at the prompt: %v", err)
	}
	out, code = promptUser(t, python, data, []string{"FIRST=one-secret", "AGAIN=another-secret"}, "passwd", "carol@localhost")
	if code != 1 || !strings.Contains(out, "do not match") {
		t.Errorf("user passwd with two different answers: exit %d, want 1 saying they do not match\n%s", code, out)
	}
	if err := authAs(t, srv, "carol@localhost", "typed-secret"); err != nil {
		t.Errorf("AUTH after a refused passwd: %v", err)
	}
}

// TestUserPromptEchoOffFirst: a password typed (or pasted, or sent by a
// script) the moment the prompt shows must not be echoed, so echo has to be
// off before the prompt is printed. The window is short, so the test types
// at once, up to ten times.
func TestUserPromptEchoOffFirst(t *testing.T) {
	t.Parallel()
	python := needTool(t, "python3")
	data := filepath.Join(workDir(t), "data")
	for i := range 10 {
		secret := fmt.Sprintf("fast-secret-%d", i)
		out, code := promptUser(t, python, data, []string{"NOWAIT=1", "FIRST=" + secret, "AGAIN=" + secret}, "add", fmt.Sprintf("fast%d@localhost", i))
		if code != 0 {
			t.Fatalf("user add on a terminal: exit %d\n%s", code, out)
		}
		if strings.Contains(out, secret) {
			t.Fatalf("try %d: the password typed at the prompt was echoed:\n%s", i, out)
		}
	}
}

// TestUserAddDomains: without a running server, `relay user add` checks an
// address against the domains relay serve last ran with (or those of
// --config), so an account for the server's own domain needs no --force.
func TestUserAddDomains(t *testing.T) {
	t.Parallel()
	dir := workDir(t)
	data := filepath.Join(dir, "data")
	u := userRun{t: t, data: data}
	u.want("password\n", 1, "", "example.org is not a local domain", "add", "bob@example.org", "--password-stdin")
	srv := startServer(t, data, "--domain", "example.org", "--domain", "example.net")
	srv.stop()
	// serve says where its data lives, and that it made the directory.
	abs, _ := filepath.Abs(data)
	for _, want := range []string{`msg="created data directory" dir=` + abs, `msg="data directory" dir=` + abs} {
		if !strings.Contains(srv.logText(), want) {
			t.Errorf("the server log does not say %q:\n%s", want, srv.logText())
		}
	}
	u.want("password\n", 0, "user bob@example.org added", "", "add", "bob@example.org", "--password-stdin")
	u.want("password\n", 1, "", "the local domains are example.org, example.net", "add", "bob@localhost", "--password-stdin")
	cfg := filepath.Join(dir, "relay.toml")
	if err := os.WriteFile(cfg, []byte("domain = [\"localhost\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u.want("password\n", 0, "user bob@localhost added", "", "add", "bob@localhost", "--password-stdin", "--config", cfg)
}

// TestFormatVersion: `relay version` names the module version and the
// revision the go command recorded.
func TestFormatVersion(t *testing.T) {
	settings := []debug.BuildSetting{{Key: "vcs.revision", Value: "7f24528d277f"}, {Key: "vcs.time", Value: "2026-12-02T13:08:21Z"}, {Key: "vcs.modified", Value: "true"}}
	for _, tc := range []struct {
		v        string
		settings []debug.BuildSetting
		want     string
	}{
		{"v0.0.0-20261202130821-7f24528d277f", settings, "v0.0.0-20261202130821-7f24528d277f (revision 7f24528d277f of 2026-12-02T13:08:21Z, with local changes)"},
		{"(devel)", settings[:1], "(devel) (revision 7f24528d277f)"},
		{"", nil, "(devel)"},
	} {
		if got := formatVersion(tc.v, tc.settings); got != tc.want {
			t.Errorf("formatVersion(%q) = %q, want %q", tc.v, got, tc.want)
		}
	}
}
