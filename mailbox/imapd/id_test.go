package imapd_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/mailbox/imapd"
)

// RFC 2971: ID before and after login, answered with the server's name and
// version and nothing else; ID is advertised; a malformed ID gets BAD and
// the session goes on, before login too.
func TestID(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{Version: "v1.2.3"})
	const answer = `* ID ("name" "relay" "version" "v1.2.3")`
	rc := dialRaw(t, ts.addr)
	if !regexp.MustCompile(`^\* OK \[CAPABILITY [^\]]* ID[ \]]`).MatchString(rc.Hi) {
		t.Errorf("greeting %q does not advertise ID", rc.Hi)
	}
	if caps := capsOf(t, rc.ok("CAPABILITY")); !slices.Contains(caps, "ID") {
		t.Errorf("CAPABILITY before login %q lacks ID", caps)
	}

	for _, cmd := range []string{
		`ID ("name" "Thunderbird" "version" "128.0")`,
		`id nil`,
		`ID ()`,
		`ID ("name" NIL "os" "Linux" "vendor" "a \"quoted\\\" one")`,
		"ID (\"name\" {8+}\r\nimapflow)",
		"ID ({4+}\r\nname \"x\")",
	} {
		if u := rc.ok(cmd); !slices.Equal(u, []string{answer}) {
			t.Errorf("%q before login: %q, want %q", cmd, u, answer)
		}
	}
	// A synchronizing literal gets its continuation request.
	rc.n++
	rc.send(fmt.Sprintf("T%d ID (\"name\" {3}", rc.n))
	if got := rc.readResp(); got != "+ Ready for literal data" {
		t.Fatalf("ID with a synchronizing literal: %q, want a continuation request", got)
	}
	rc.send("iOS)")
	if u, st := rc.wait(fmt.Sprintf("T%d", rc.n)); !slices.Equal(u, []string{answer}) || st != "OK ID completed" {
		t.Errorf("ID with a synchronizing literal: %q %q", u, st)
	}

	// Malformed: BAD, nothing run, no BYE; a refused literal's bytes are
	// skipped, not run as commands.
	for _, tc := range []struct{ cmd, why string }{
		{`ID`, "unexpected end of line"},
		{`ID (`, "unexpected end of line"},
		{`ID ("name")`, `expected " "`},
		{`ID ("name" "x"`, "unexpected end of line"},
		{`ID ("name" "x") extra`, "unexpected text after the list"},
		{`ID name`, "expected a list or NIL"},
		{`ID (NIL "x")`, "a field name is a string, not NIL"},
		{`ID ("` + strings.Repeat("f", 31) + `" "x")`, "string longer than 30 octets"},
		{"ID (\"name\" {1100+}\r\n" + strings.Repeat("a1 LOGOUT\r\n", 100) + ")", "string longer than 1024 octets"},
		{"ID (\"name\" \"a\rb\")", "CR in a quoted string"},
	} {
		u, st := rc.run(tc.cmd)
		if want := "BAD [CLIENTBUG] ID: " + tc.why; len(u) != 0 || st != want {
			t.Errorf("%.60q: %q %q, want %q", tc.cmd, u, st, want)
		}
		rc.ok("NOOP")
	}
	// 31 pairs are more than RFC 2971 §3.3 allows.
	pairs := strings.Repeat(`"a" "b" `, 31)
	if _, st := rc.run("ID (" + strings.TrimSpace(pairs) + ")"); st != "BAD [CLIENTBUG] ID: more than 30 field-value pairs" {
		t.Errorf("ID with 31 pairs: %q", st)
	}

	// The session still logs in; the LOGIN reply's capabilities name ID.
	if u, st := rc.run("LOGIN " + testUser + " " + testPass); !strings.HasPrefix(st, "OK [CAPABILITY ") || !slices.Contains(strings.Fields(strings.TrimSuffix(strings.TrimPrefix(st, "OK [CAPABILITY "), "] Logged in")), "ID") {
		t.Errorf("LOGIN after ID: %q %q, want OK with ID among the capabilities", u, st)
	}
	if caps := capsOf(t, rc.ok("CAPABILITY")); !slices.Contains(caps, "ID") {
		t.Errorf("CAPABILITY after login %q lacks ID", caps)
	}
	rc.ok("SELECT INBOX")
	if u := rc.ok(`ID ("name" "x")`); !slices.Equal(u, []string{answer}) {
		t.Errorf("ID in the selected state: %q", u)
	}
	rc.ok("NOOP")

	// ID does not open the door to other unknown commands before login,
	// which imapserver answers with BAD and BYE (cross-protocol attacks).
	other := dialRaw(t, ts.addr)
	other.ok(`ID NIL`)
	if _, st := other.run("XYZZY"); !strings.HasPrefix(st, "BAD") {
		t.Errorf("unknown command before login after ID: %q, want BAD", st)
	}
	if bye := other.readResp(); !strings.HasPrefix(bye, "* BYE") {
		t.Errorf("unknown command before login after ID: then %q, want BYE", bye)
	}
}

// Without a version set, ID answers with the module version of the build
// (the test binary's is "(devel)" or a pseudo-version).
func TestIDDefaultVersion(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	u := dialRaw(t, ts.addr).ok("ID NIL")
	if len(u) != 1 || !regexp.MustCompile(`^\* ID \("name" "relay" "version" "[^"\\]+"\)$`).MatchString(u[0]) {
		t.Errorf("ID: %q, want the name and a version", u)
	}
}

// imaplibScript sends ID before and after login with Python's imaplib, as
// clients do, and reports what SELECT and STORE of a keyword said.
const imaplibScript = `
import imaplib, json, sys
host, port, user, password = sys.argv[1:5]
imaplib.Commands["ID"] = ("NONAUTH", "AUTH", "SELECTED")
M = imaplib.IMAP4(host, int(port), timeout=60)
out = {"caps": sorted(M.capabilities)}
typ, data = M.xatom("ID", '("name" "imaplib" "version" "3")')
out["id_before"] = [typ, M.response("ID")[1][0].decode()]
M.login(user, password)
typ, data = M.xatom("ID", "NIL")
out["id_after"] = [typ, M.response("ID")[1][0].decode()]
typ, data = M.select("INBOX")
out["unseen"] = M.response("UNSEEN")[1][0].decode()
typ, data = M.store("1", "+FLAGS", "($Phishing)")
out["store"] = [typ, M.response("FLAGS")[1][-1].decode()]
M.logout()
print(json.dumps(out))
`

// Python's imaplib, a real client, drives ID, UNSEEN and a new keyword.
func TestIDImaplib(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("RELAY_INTEROP") == "1" {
			t.Fatalf("python3 is not installed, and RELAY_INTEROP=1 requires it: %v", err)
		}
		t.Skipf("python3 is not installed (set RELAY_INTEROP=1 to make that a failure)")
	}
	ts := startServer(t, imapd.Config{Version: "v9.9.9"})
	ts.appendN(t, "INBOX", 2)
	script := filepath.Join(t.TempDir(), "id.py")
	if err := os.WriteFile(script, []byte(imaplibScript), 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(ts.addr, ":")
	cmd := exec.Command(python, script, host, port, testUser, testPass)
	cmd.WaitDelay = time.Minute
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3 imaplib: %v\n%s", err, out)
	}
	var r struct {
		Caps     []string `json:"caps"`
		IDBefore []string `json:"id_before"`
		IDAfter  []string `json:"id_after"`
		Unseen   string   `json:"unseen"`
		Store    []string `json:"store"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("imaplib printed no JSON: %v\n%s", err, out)
	}
	const id = `("name" "relay" "version" "v9.9.9")`
	if !slices.Contains(r.Caps, "ID") {
		t.Errorf("imaplib's capabilities %q lack ID", r.Caps)
	}
	if !slices.Equal(r.IDBefore, []string{"OK", id}) || !slices.Equal(r.IDAfter, []string{"OK", id}) {
		t.Errorf("ID before login %q, after %q; want OK %s", r.IDBefore, r.IDAfter, id)
	}
	if r.Unseen != "1" {
		t.Errorf("SELECT: UNSEEN %q, want 1", r.Unseen)
	}
	if !slices.Equal(r.Store, []string{"OK", `(\Seen \Answered \Flagged \Deleted \Draft $Phishing)`}) {
		t.Errorf("STORE of a new keyword: %q, want FLAGS with $Phishing", r.Store)
	}
}
