package main

// End-to-end tests: they build the real relay binary once, start
// `relay serve` on loopback with a data directory of its own, and drive it
// and the other subcommands as an operator would. A failed test keeps its
// data directory and logs its path and the server's log.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	storebadger "github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/internal/testkit/pgtest"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// relayBinary builds the relay binary on first use (go build from this
// directory) and returns its path. RELAY_E2E_BIN names a prebuilt binary to
// test instead. With RELAY_COVERDIR set (make cover), the binary is built
// for coverage and every run writes its counts there (testEnv sets
// GOCOVERDIR), so that what the end-to-end tests run counts too.
func relayBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("RELAY_E2E_BIN"); p != "" {
			binPath, binErr = filepath.Abs(p)
			return
		}
		binDir, binErr = os.MkdirTemp("", "relay-e2e-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "relay")
		args := []string{"build", "-o", binPath}
		if os.Getenv("RELAY_COVERDIR") != "" {
			args = append(args, "-cover", "-coverpkg=github.com/relaymail/relay/...")
		}
		out, err := exec.Command("go", append(args, "./")...).CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatalf("cannot build relay: %v", binErr)
	}
	return binPath
}

// workDir returns a fresh directory that is removed after the test, unless
// the test failed: then it is kept and its path logged.
func workDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "relay-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept %s for inspection", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// testEnv is the environment of every relay process: the test's own, less
// RELAY_DATA, so that a developer's setting cannot leak in.
func testEnv(extra ...string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "RELAY_DATA=") })
	if dir := os.Getenv("RELAY_COVERDIR"); dir != "" {
		env = append(env, "GOCOVERDIR="+dir)
	}
	return append(env, extra...)
}

// result is what one relay command did.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// runRelay runs the relay binary with args and env (added to testEnv) and
// returns its output and exit status.
func runRelay(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return runRelayStdin(t, "", env, args...)
}

// runRelayStdin is runRelay with stdin as the command's standard input.
func runRelayStdin(t *testing.T, stdin string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, relayBinary(t), args...)
	cmd.Env = testEnv(env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		res.code = ee.ExitCode()
	default:
		t.Fatalf("relay %s: %v\n%s", strings.Join(args, " "), err, res)
	}
	return res
}

// mustRelay runs a relay command that must exit 0.
func mustRelay(t *testing.T, args ...string) result {
	t.Helper()
	res := runRelay(t, nil, args...)
	if res.code != 0 {
		t.Fatalf("relay %s: %s", strings.Join(args, " "), res)
	}
	return res
}

// testPassword is the password of every account the tests make.
const testPassword = "e2e-password"

// addUsers makes local accounts for addrs in data, so that RCPT TO accepts
// them once the relay checks local users (550 5.1.1 otherwise). A relay
// without accounts (no `relay user`) accepts every local address as it is.
// The accounts are made before the server first runs with their domain,
// so the domain check is skipped with --force (TestUserAddDomains tests it).
func addUsers(t *testing.T, data string, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		res := runRelayStdin(t, testPassword+"\n", nil, "user", "add", a, "--password-stdin", "--force", "--data", data)
		if res.code == 2 && strings.Contains(res.stderr, `unknown subcommand "user"`) {
			return
		}
		if res.code != 0 {
			t.Fatalf("relay user add %s: %s", a, res)
		}
	}
}

// server is a running `relay serve` process.
type server struct {
	t     *testing.T
	data  string
	addr  string            // SMTP relay listener, host:port
	addrs map[string]string // every TCP listener by name (smtp, submission)
	cmd   *exec.Cmd

	mu  sync.Mutex
	log []string // stderr lines

	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done
}

var listenLine = regexp.MustCompile(`msg=listening listener=(\w+) addr=(\S+)`)

// startServer starts `relay serve` on data with the SMTP listener on a free
// loopback port and every other TCP listener off (extra flags come last and
// win, e.g. "--submission", "127.0.0.1:0"), and waits until it has logged the
// address of each TCP listener it runs.
func startServer(t *testing.T, data string, extra ...string) *server {
	t.Helper()
	args := append([]string{"serve", "--data", data,
		"--smtp", "127.0.0.1:0", "--submission", "off", "--imap", "off", "--http", "off"}, extra...)
	want := map[string]bool{}
	for i := 0; i+1 < len(args); i++ {
		if name, ok := strings.CutPrefix(args[i], "--"); ok && (name == "smtp" || name == "submission") {
			want[name] = args[i+1] != "off"
		}
	}
	cmd := exec.Command(relayBinary(t), args...)
	cmd.Env = testEnv()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, data: data, cmd: cmd, addrs: map[string]string{}, done: make(chan struct{})}
	listening := make(chan [2]string, 8)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.log = append(s.log, line)
			s.mu.Unlock()
			if m := listenLine.FindStringSubmatch(line); m != nil {
				select {
				case listening <- [2]string{m[1], m[2]}:
				default:
				}
			}
		}
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			t.Logf("relay serve --data %s log:\n%s", data, s.logText())
		}
	})
	timeout := time.After(20 * time.Second)
	for name, on := range want {
		for on && s.addrs[name] == "" {
			select {
			case l := <-listening:
				s.addrs[l[0]] = l[1]
			case <-s.done:
				t.Fatalf("relay serve exited before listening (%v):\n%s", s.waitErr, s.logText())
			case <-timeout:
				t.Fatalf("relay serve did not log its %s address within 20s:\n%s", name, s.logText())
			}
		}
	}
	s.addr = s.addrs["smtp"]
	return s
}

func (s *server) logText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.log, "\n")
}

// stop sends SIGTERM and waits for a clean exit (status 0).
func (s *server) stop() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.t.Fatalf("relay serve did not stop within 30s of SIGTERM:\n%s", s.logText())
	}
	if s.waitErr != nil {
		s.t.Fatalf("relay serve exited with %v after SIGTERM:\n%s", s.waitErr, s.logText())
	}
}

// kill sends SIGKILL (unless the process is gone already) and waits for it.
func (s *server) kill() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// dial returns a client of the relay port that has said EHLO.
func (s *server) dial(t *testing.T) *smtp.Client {
	t.Helper()
	return s.dialAddr(t, s.addr)
}

// dialAddr returns a client of addr that has said EHLO.
func (s *server) dialAddr(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("e2e.relay.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c
}

// send delivers one message to the server and fails the test unless it is
// answered 250.
func (s *server) send(t *testing.T, from string, to []string, msg string) {
	t.Helper()
	c := s.dial(t)
	if err := c.SendMail(from, to, strings.NewReader(msg)); err != nil {
		t.Fatalf("send from %s: %v", from, err)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
}

// submit sends one message on the submission port as user (password
// testPassword) and fails the test unless it is answered 250.
func (s *server) submit(t *testing.T, user string, to []string, msg string) {
	t.Helper()
	addr := s.addrs["submission"]
	if addr == "" {
		t.Fatal("relay serve runs no submission listener")
	}
	c := s.dialAddr(t, addr)
	if err := c.Auth(sasl.NewPlainClient("", user, testPassword)); err != nil {
		t.Fatalf("AUTH PLAIN as %s: %v", user, err)
	}
	if err := c.SendMail(user, to, strings.NewReader(msg)); err != nil {
		t.Fatalf("submit as %s: %v", user, err)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
}

// crlf turns LF line ends into CRLF, as SMTP wants them.
func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// queued is one element of `relay queue list --json`.
type queued struct {
	ID      string    `json:"id"`
	From    string    `json:"from"`
	Size    int64     `json:"size"`
	Arrived time.Time `json:"arrived"`
	Params  struct {
		SMTPUTF8 bool   `json:"smtputf8"`
		Body     string `json:"body"`
	} `json:"params"`
	Recipients []struct {
		Address     string    `json:"address"`
		State       string    `json:"state"`
		Attempts    int       `json:"attempts"`
		NextAttempt time.Time `json:"next_attempt"`
		LastError   string    `json:"last_error"`
		Reply       struct {
			Code     int    `json:"code"`
			Enhanced string `json:"enhanced"`
			Text     string `json:"text"`
		} `json:"reply"`
	} `json:"recipients"`
}

// shown is `relay queue show ID --body --json`.
type shown struct {
	queued
	Headers string `json:"headers"`
	Body    string `json:"body"`
}

// Whole returns the stored message: header section and body.
func (s shown) Whole() string { return s.Headers + s.Body }

// listQueue runs `relay queue list --json` on data, checks that the output
// is a JSON array whose elements carry every documented field, and returns
// it together with the raw output.
func listQueue(t *testing.T, data string) ([]queued, string) {
	t.Helper()
	res := mustRelay(t, "queue", "list", "--json", "--data", data)
	var raw []map[string]any
	if err := json.Unmarshal([]byte(res.stdout), &raw); err != nil {
		t.Fatalf("queue list --json is not a JSON array: %v\n%s", err, res.stdout)
	}
	if raw == nil {
		t.Fatalf("queue list --json printed %q, want an array", strings.TrimSpace(res.stdout))
	}
	for _, m := range raw {
		requireKeys(t, m, "id", "from", "size", "arrived", "recipients")
		rcpts, ok := m["recipients"].([]any)
		if !ok || len(rcpts) == 0 {
			t.Fatalf("message %v: recipients is %v, want a non-empty array", m["id"], m["recipients"])
		}
		for _, r := range rcpts {
			rm, ok := r.(map[string]any)
			if !ok {
				t.Fatalf("message %v: recipient %v is not an object", m["id"], r)
			}
			requireKeys(t, rm, "address", "state", "attempts", "next_attempt", "last_error")
		}
	}
	var ms []queued
	if err := json.Unmarshal([]byte(res.stdout), &ms); err != nil {
		t.Fatalf("queue list --json: %v", err)
	}
	return ms, res.stdout
}

func requireKeys(t *testing.T, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Fatalf("JSON object lacks %q: %v", k, m)
		}
	}
}

// showMessage runs `relay queue show ID --body --json` (the flags after the
// ID, as operators type them).
func showMessage(t *testing.T, data, id string) shown {
	t.Helper()
	res := mustRelay(t, "queue", "show", id, "--body", "--json", "--data", data)
	var sh shown
	if err := json.Unmarshal([]byte(res.stdout), &sh); err != nil {
		t.Fatalf("queue show --json: %v\n%s", err, res.stdout)
	}
	if sh.ID != id {
		t.Fatalf("queue show %s returned message %q", id, sh.ID)
	}
	return sh
}

// queuedFrom returns the one queued message whose sender is from.
func queuedFrom(t *testing.T, data, from string) queued {
	t.Helper()
	ms, out := listQueue(t, data)
	var found []queued
	for _, m := range ms {
		if m.From == from {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one queued message from %s, found %d:\n%s", from, len(found), out)
	}
	return found[0]
}

func TestCLIExitStatus(t *testing.T) {
	empty := workDir(t)
	cfg := func(name string) string { return filepath.Join("..", "..", "testdata", "config", name) }
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{"version", []string{"version"}, 0, "relay ", ""},
		{"help", []string{"help"}, 0, "usage:", ""},
		{"no subcommand", nil, 2, "", "a subcommand is needed"},
		{"unknown subcommand", []string{"frobnicate"}, 2, "", `unknown subcommand "frobnicate"`},
		{"config check good file", []string{"config", "check", "--config", cfg("good.toml")}, 0, "configuration ok", ""},
		{"config check defaults", []string{"config", "check"}, 0, "configuration ok", ""},
		{"config check unknown key", []string{"config", "check", "--config", cfg("bad-unknown-key.toml")}, 1, "", "smtp-port"},
		{"config check bad address", []string{"config", "check", "--config", cfg("bad-address.toml")}, 1, "", `smtp: "localhost" is not HOST:PORT`},
		{"config check bad flag value", []string{"config", "check", "--imap", "nowhere"}, 1, "", `imap: "nowhere" is not HOST:PORT`},
		{"config check missing file", []string{"config", "check", "--config", cfg("no-such.toml")}, 1, "", "no-such.toml"},
		{"config check unknown flag", []string{"config", "check", "--smtp-port", "25"}, 2, "", "smtp-port"},
		{"config without verb", []string{"config"}, 2, "", "config: the only verb is check"},
		{"queue without verb", []string{"queue"}, 2, "", "a verb is needed"},
		{"queue bad verb", []string{"queue", "frobnicate", "--data", empty}, 2, "", `unknown verb "frobnicate"`},
		{"queue show without ID", []string{"queue", "show", "--data", empty}, 2, "", "one queue ID"},
		{"queue list with argument", []string{"queue", "list", "extra", "--data", empty}, 2, "", "no arguments"},
		{"queue list without data", []string{"queue", "list", "--data", empty}, 1, "", "no relay data in " + empty},
		{"queue show without data", []string{"queue", "show", "NOSUCHID", "--data", empty}, 1, "", "no relay data in " + empty},
		{"help flag", []string{"-h"}, 0, "usage:", ""},
		{"queue help", []string{"queue", "-h"}, 0, "relay queue flush [ID...]", ""},
		{"user help", []string{"user", "--help"}, 0, "relay user passwd ADDRESS", ""},
		{"sendmail help", []string{"sendmail", "-h"}, 0, "relay sendmail [-t]", ""},
		{"help of a subcommand", []string{"help", "queue"}, 0, "relay queue tail", ""},
		{"queue verb help", []string{"queue", "show", "-h"}, 0, "", "-body"},
		{"serve help", []string{"serve", "-h"}, 0, "", "-max-message-size size"},
		{"global flag before the subcommand", []string{"--data", empty, "queue", "list"}, 1, "", "no relay data in " + empty},
		{"global flag with = before the subcommand", []string{"--data=" + empty, "user", "list"}, 1, "", "no relay data in " + empty},
		{"other flag before the subcommand", []string{"--json", "queue", "list"}, 2, "", "--json cannot stand before the subcommand"},
		{"global flag without value", []string{"--data"}, 2, "", "--data needs a value"},
		{"user list without data", []string{"user", "list", "--data", empty}, 1, "", "no relay data in " + empty},
		{"bad usage shows the subcommand's usage", []string{"queue", "show", "--data", empty}, 2, "", "relay queue tail"},
		{"serve with argument", []string{"serve", "extra", "--data", empty}, 2, "", "serve takes no arguments"},
		{"serve bad address", []string{"serve", "--data", empty, "--smtp", "nowhere"}, 1, "", `smtp: "nowhere" is not HOST:PORT`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := runRelay(t, nil, tt.args...)
			if res.code != tt.code || !strings.Contains(res.stdout, tt.stdout) || !strings.Contains(res.stderr, tt.stderr) {
				t.Errorf("relay %s: %s\nwant exit %d, stdout with %q, stderr with %q",
					strings.Join(tt.args, " "), res, tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

// remoteFlags route the test's remote domain to a closed loopback port and
// DNS to nowhere, so that remote recipients stay queued, deferred, and no
// query or connection leaves the machine.
var remoteFlags = []string{"--transport", "example.test=127.0.0.1:1", "--dns", "127.0.0.1:1"}

// TestQueueListShow checks `relay queue list|show` against a running server
// (over the admin socket) and after it stopped (straight from the
// database), and that both give the same answer. Local recipients are
// delivered at once, so the messages go to remote recipients (submitted
// with AUTH), which stay in the queue.
func TestQueueListShow(t *testing.T) {
	t.Parallel()
	data := filepath.Join(workDir(t), "data")
	addUsers(t, data, "alice@localhost", "bob@localhost")
	srv := startServer(t, data, append([]string{"--submission", "127.0.0.1:0"}, remoteFlags...)...)

	if ms, out := listQueue(t, data); len(ms) != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("fresh queue: queue list --json = %q, want []", out)
	}
	if res := mustRelay(t, "queue", "list", "--data", data); !strings.Contains(res.stdout, "queue is empty") {
		t.Errorf("fresh queue: queue list = %q, want it to say the queue is empty", res.stdout)
	}

	plain, err := os.ReadFile(filepath.Join("..", "..", "testdata", "messages", "plain.eml"))
	if err != nil {
		t.Fatal(err)
	}
	srv.submit(t, "alice@localhost", []string{"bob@localhost", "dave@example.test"}, crlf(string(plain)))
	srv.submit(t, "alice@localhost", []string{"ERIN@Example.TEST"}, crlf("Subject: second\n\nto a remote domain\n"))

	// Wait until the delivery loop has tried each recipient once: bob is
	// delivered, the remote ones are deferred for minutes.
	var running []queued
	var runningOut string
	settled := func() bool {
		running, runningOut = listQueue(t, data)
		if len(running) != 2 {
			return false
		}
		for _, m := range running {
			for _, r := range m.Recipients {
				if r.Attempts == 0 {
					return false
				}
			}
		}
		return true
	}
	if !waitFor(15*time.Second, settled) {
		t.Fatalf("queue did not settle (two messages, every recipient tried once) within 15s:\n%s", runningOut)
	}
	first, second := running[0], running[1]
	if first.From != "alice@localhost" || second.From != "alice@localhost" {
		t.Errorf("senders %q, %q; want alice@localhost", first.From, second.From)
	}
	if first.ID == "" || first.ID >= second.ID {
		t.Errorf("IDs %q, %q: want non-empty, in arrival order", first.ID, second.ID)
	}
	if first.Arrived.IsZero() || time.Since(first.Arrived) > time.Minute || second.Arrived.Before(first.Arrived) {
		t.Errorf("arrival times %v, %v: want recent, in order", first.Arrived, second.Arrived)
	}
	if got := rcptStates(first); got != "bob@localhost delivered 1, dave@example.test pending 1" {
		t.Errorf("first message recipients: %s", got)
	}
	if got := rcptStates(second); got != "ERIN@example.test pending 1" {
		t.Errorf("second message recipients: %s (want the domain lower-cased, the local part kept)", got)
	}
	for _, m := range running {
		for _, r := range m.Recipients {
			if r.State == "pending" && (r.LastError == "" || !r.NextAttempt.After(time.Now())) {
				t.Errorf("deferred recipient %+v: want the last error and a later next attempt", r)
			}
			// The reply, typed and rendered for scripts, names the peer
			// and says nothing of Go's dial error.
			const refused = "connection refused by 127.0.0.1[127.0.0.1]:1"
			if r.State == "pending" && (r.LastError != "451 4.4.1 "+refused ||
				r.Reply.Code != 451 || r.Reply.Enhanced != "4.4.1" || r.Reply.Text != refused) {
				t.Errorf("deferred recipient %+v: want last_error and reply 451 4.4.1 %s", r, refused)
			}
		}
	}

	sh := showMessage(t, data, first.ID)
	checkStored(t, sh, first.ID, crlf(string(plain)))

	// The text forms, with the flags after the positional argument.
	res := mustRelay(t, "queue", "show", first.ID, "--data", data)
	for _, want := range []string{first.ID, "alice@localhost", "<dave@example.test> pending", "Subject: plain sample"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("queue show %s lacks %q:\n%s", first.ID, want, res.stdout)
		}
	}
	if strings.Contains(res.stdout, "leading dot") {
		t.Errorf("queue show without --body printed the body:\n%s", res.stdout)
	}
	res = mustRelay(t, "queue", "list", "--data", data)
	for _, want := range []string{first.ID, second.ID, "alice@localhost", "dave@example.test", "ERIN@example.test", "2 message(s)"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("queue list lacks %q:\n%s", want, res.stdout)
		}
	}
	if res := runRelay(t, nil, "queue", "show", "NOSUCHID", "--data", data); res.code != 1 || !strings.Contains(res.stderr, "NOSUCHID: no such message") {
		t.Errorf("queue show NOSUCHID, server running: %s\nwant exit 1 saying there is no such message", res)
	}
	// A second server on the same data directory must refuse to start.
	if res := runRelay(t, nil, "serve", "--data", data, "--smtp", "127.0.0.1:0", "--submission", "off", "--imap", "off", "--http", "off"); res.code != 1 || !strings.Contains(res.stderr, "in use") {
		t.Errorf("second relay serve on %s: %s\nwant exit 1 saying the data directory is in use", data, res)
	}

	srv.stop()
	if _, err := os.Stat(filepath.Join(data, "relay.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("admin socket after a clean stop: %v, want it removed", err)
	}

	stopped, stoppedOut := listQueue(t, data)
	if !reflect.DeepEqual(decodeAny(t, runningOut), decodeAny(t, stoppedOut)) {
		t.Errorf("queue list --json differs between running server and database:\nrunning:\n%s\nstopped:\n%s", runningOut, stoppedOut)
	}
	if len(stopped) != 2 {
		t.Fatalf("stopped: %d messages, want 2", len(stopped))
	}
	checkStored(t, showMessage(t, data, first.ID), first.ID, crlf(string(plain)))
	res = mustRelay(t, "queue", "show", second.ID, "--data", data)
	if !strings.Contains(res.stdout, "<ERIN@example.test> pending") || !strings.Contains(res.stdout, "Subject: second") {
		t.Errorf("queue show %s, stopped:\n%s", second.ID, res.stdout)
	}
	if res := runRelay(t, nil, "queue", "show", "NOSUCHID", "--data", data); res.code != 1 || !strings.Contains(res.stderr, "NOSUCHID: no such message") {
		t.Errorf("queue show NOSUCHID, server stopped: %s\nwant exit 1 saying there is no such message", res)
	}

	// The data directory can also come from RELAY_DATA or the config file.
	if res := runRelay(t, []string{"RELAY_DATA=" + data}, "queue", "list", "--json"); res.code != 0 || res.stdout != stoppedOut {
		t.Errorf("queue list --json with RELAY_DATA: %s", res)
	}
	cfgFile := filepath.Join(filepath.Dir(data), "relay.toml")
	if err := os.WriteFile(cfgFile, fmt.Appendf(nil, "data = %q\n", data), 0o644); err != nil {
		t.Fatal(err)
	}
	if res := runRelay(t, nil, "queue", "list", "--json", "--config", cfgFile); res.code != 0 || res.stdout != stoppedOut {
		t.Errorf("queue list --json --config with a data setting: %s", res)
	}
}

// rcptStates sums up a message's recipients as "address state attempts, ...".
func rcptStates(m queued) string {
	var parts []string
	for _, r := range m.Recipients {
		parts = append(parts, fmt.Sprintf("%s %s %d", r.Address, r.State, r.Attempts))
	}
	return strings.Join(parts, ", ")
}

// waitFor polls cond every 50ms until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkStored checks that a queued message is msg behind the relay's
// Received: header, which names its queue ID (RFC 5321 §4.4).
func checkStored(t *testing.T, sh shown, id, msg string) {
	t.Helper()
	whole := sh.Whole()
	if int64(len(whole)) != sh.Size {
		t.Errorf("message %s: %d bytes stored, size says %d", id, len(whole), sh.Size)
	}
	if !strings.HasPrefix(whole, "Received: ") || !strings.Contains(whole[:strings.Index(whole, "\r\n\r\n")], " id "+id) {
		t.Errorf("message %s does not start with a Received: header naming its ID:\n%.400s", id, whole)
	}
	if !strings.HasSuffix(whole, msg) {
		t.Errorf("message %s: the stored message does not end with what was sent:\n%s", id, whole)
	}
}

// stored is a message at rest in the data directory: in the spool, or
// delivered into a mailbox.
type stored struct {
	where   string // "queue" or the user whose INBOX holds it
	id      string // queue ID (in the queue only)
	from    string // envelope sender (in the queue only)
	size    int64
	content string
}

// readStored reads every queued message and every message in the INBOX of
// users straight from the database. The server must be down, since Badger
// admits one process at a time.
func readStored(t *testing.T, data string, users ...string) []stored {
	t.Helper()
	db, err := storebadger.Open(data, storebadger.Options{})
	if err != nil {
		t.Fatalf("open the database in %s: %v", data, err)
	}
	defer db.Close()
	engine := storebadger.New(db, nil)
	var out []stored
	sp := spool.New(engine, nil)
	ms, err := sp.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		r, err := sp.Body(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("read queued message %s: %v", m.ID, err)
		}
		out = append(out, stored{where: "queue", id: m.ID, from: m.From, size: m.Size, content: string(b)})
	}
	boxes := mailbox.New(engine, nil)
	for _, u := range users {
		msgs, err := boxes.Messages(u, "INBOX")
		if err != nil {
			t.Fatalf("INBOX of %s: %v", u, err)
		}
		for _, m := range msgs {
			b, err := io.ReadAll(boxes.Open(m))
			if err != nil {
				t.Fatalf("read message %d in the INBOX of %s: %v", m.UID, u, err)
			}
			out = append(out, stored{where: u, size: m.Size, content: string(b)})
		}
	}
	return out
}

func decodeAny(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	return v
}
