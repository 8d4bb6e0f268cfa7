package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// needTool returns the path of an interop client. It skips the test when the
// client is missing, except under RELAY_INTEROP=1 (as .ci/run sets), where a
// missing client is a failure.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("RELAY_INTEROP") == "1" {
		t.Fatalf("%s is not installed, and RELAY_INTEROP=1 requires every interop client: %v", name, err)
	}
	t.Skipf("%s is not installed (set RELAY_INTEROP=1 to make that a failure)", name)
	return ""
}

// runTool runs an interop client and returns its combined output and exit
// status.
func runTool(t *testing.T, path string, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(path, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee) && ee.Exited():
		return string(out), ee.ExitCode()
	default:
		t.Fatalf("%s: %v\n%s", path, err, out)
		return "", 0
	}
}

// interopCheck is what one interop case expects to find at rest once the
// server has stopped: count copies of the message carrying marker (one per
// recipient), each passing check.
type interopCheck struct {
	name   string
	marker string
	count  int
	check  func(t *testing.T, s stored)
}

// TestInterop sends mail to the real binary with real clients: swaks for a
// 5 MiB attachment and for pipelining, python3 smtplib for SMTPUTF8 (swaks,
// at least up to 20201014.0 as Debian ships it, has no way to put SMTPUTF8 on
// MAIL FROM; it is used to check that a UTF-8 address without it is refused).
// Each accepted message must then be in the data directory, queued or
// delivered to its recipients' INBOXes, as it was sent.
func TestInterop(t *testing.T) {
	t.Parallel()
	data := workDir(t)
	users := []string{"bob@localhost", "carol@localhost", "jösé@localhost"}
	addUsers(t, data, users...)
	srv := startServer(t, data)
	var checks []interopCheck

	t.Run("swaks attachment 5MiB", func(t *testing.T) {
		swaks := needTool(t, "swaks")
		att := make([]byte, 5<<20)
		rand.Read(att)
		file := filepath.Join(t.TempDir(), "attachment.bin")
		if err := os.WriteFile(file, att, 0o600); err != nil {
			t.Fatal(err)
		}
		out, code := runTool(t, swaks, "--server", srv.addr, "--helo", "swaks.e2e.relay.test",
			"--from", "attach@localhost", "--to", "bob@localhost", "--header", "Subject: 5 MiB attachment",
			"--attach-type", "application/octet-stream", "--attach", "@"+file, "--suppress-data")
		if code != 0 || !strings.Contains(out, "<-  250 2.0.0 OK: queued") {
			t.Fatalf("swaks exit %d, want 0 and the message queued:\n%s", code, out)
		}
		b64 := base64.StdEncoding.EncodeToString(att)
		checks = append(checks, interopCheck{strings.TrimPrefix(t.Name(), "TestInterop/"), "Subject: 5 MiB attachment\r\n", 1, func(t *testing.T, s stored) {
			// swaks wraps the base64 in lines; without the line breaks it
			// is one run of the whole file's encoding.
			if !strings.Contains(strings.ReplaceAll(s.content, "\r\n", ""), b64) {
				t.Errorf("the stored message (%d bytes) does not hold the base64 of the 5 MiB attachment", s.size)
			}
		}})
	})

	t.Run("swaks pipelining", func(t *testing.T) {
		swaks := needTool(t, "swaks")
		sample := filepath.Join("..", "..", "testdata", "messages", "plain.eml")
		raw, err := os.ReadFile(sample)
		if err != nil {
			t.Fatal(err)
		}
		out, code := runTool(t, swaks, "--server", srv.addr, "--helo", "swaks.e2e.relay.test", "--pipeline",
			"--from", "pipeline@localhost", "--to", "bob@localhost,carol@localhost", "--data", "@"+sample)
		if code != 0 {
			t.Fatalf("swaks --pipeline exit %d:\n%s", code, out)
		}
		// With PIPELINING (RFC 2920) swaks sends MAIL, both RCPTs and DATA
		// before it reads the first reply.
		pipelined := regexp.MustCompile(`(?m)^ -> MAIL FROM:<pipeline@localhost>\r?\n -> RCPT TO:<bob@localhost>\r?\n -> RCPT TO:<carol@localhost>\r?\n -> DATA\r?\n<-  250 `)
		if !pipelined.MatchString(out) {
			t.Errorf("swaks did not pipeline MAIL, RCPT, RCPT, DATA:\n%s", out)
		}
		// swaks ends the data with one more CRLF of its own.
		want := crlf(string(raw)) + "\r\n"
		checks = append(checks, interopCheck{strings.TrimPrefix(t.Name(), "TestInterop/"), "Subject: plain sample\r\n", 2, func(t *testing.T, s stored) {
			checkWhole(t, s, want)
		}})
	})

	t.Run("swaks UTF-8 recipient without SMTPUTF8", func(t *testing.T) {
		swaks := needTool(t, "swaks")
		out, code := runTool(t, swaks, "--server", srv.addr, "--helo", "swaks.e2e.relay.test",
			"--from", "no-utf8@localhost", "--to", "jösé@localhost", "--header", "Subject: refused")
		// RFC 6531 §3.4: a non-ASCII address needs SMTPUTF8 on MAIL FROM.
		if code == 0 || !strings.Contains(out, "<** 553 5.6.7") {
			t.Errorf("swaks exit %d, want the UTF-8 recipient refused with 553 5.6.7:\n%s", code, out)
		}
		checks = append(checks, interopCheck{strings.TrimPrefix(t.Name(), "TestInterop/"), "Subject: refused\r\n", 0, nil})
	})

	t.Run("python3 smtplib SMTPUTF8", func(t *testing.T) {
		python := needTool(t, "python3")
		sample := filepath.Join("..", "..", "testdata", "messages", "smtputf8.eml")
		raw, err := os.ReadFile(sample)
		if err != nil {
			t.Fatal(err)
		}
		const script = `
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
msg = open(sys.argv[2], "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
with smtplib.SMTP(host, int(port), local_hostname="python.e2e.relay.test", timeout=30) as s:
    s.ehlo()
    if not s.has_extn("smtputf8"):
        sys.exit("the server does not advertise SMTPUTF8")
    refused = s.sendmail("zoë@localhost", ["jösé@localhost"], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    if refused:
        sys.exit("refused: %r" % refused)
print("sent")
`
		out, code := runTool(t, python, "-c", script, srv.addr, sample)
		if code != 0 || !strings.Contains(out, "sent") {
			t.Fatalf("python3 smtplib exit %d:\n%s", code, out)
		}
		want := crlf(string(raw))
		checks = append(checks, interopCheck{strings.TrimPrefix(t.Name(), "TestInterop/"), "Message-ID: <smtputf8-sample@relay.test>\r\n", 1, func(t *testing.T, s stored) {
			checkWhole(t, s, want)
			// RFC 6531 §3.7.3: the Received: header says UTF8SMTP.
			if !strings.HasPrefix(s.content, "Received: ") || !strings.Contains(s.content[:strings.Index(s.content, "\r\n\r\n")], " with UTF8SMTP ") {
				t.Errorf("the Received: header does not say UTF8SMTP:\n%.400s", s.content)
			}
			if s.where != "queue" && s.where != "jösé@localhost" {
				t.Errorf("stored in %s, want the INBOX of jösé@localhost", s.where)
			}
		}})
	})

	// bare-newline = normalize (the default): Python's smtplib.sendmail
	// sends msg.as_bytes() with the bare LF line ends of email's default
	// policy, dot-stuffing the lines after each LF; the relay stores CRLF
	// line ends and the lines as they were written.
	t.Run("python3 smtplib bare LF", func(t *testing.T) {
		python := needTool(t, "python3")
		const script = `
import smtplib, sys
from email.message import EmailMessage
host, port = sys.argv[1].rsplit(":", 1)
msg = EmailMessage()
msg["From"] = "app@localhost"
msg["To"] = "bob@localhost"
msg["Subject"] = "bare LF from smtplib"
msg.set_content("line one\n.\n..two dots\n.three\nlast line\n")
raw = msg.as_bytes()
if b"\r" in raw or b"\n" not in raw:
    sys.exit("as_bytes() did not give bare LF line ends: %r" % raw)
with smtplib.SMTP(host, int(port), local_hostname="python.e2e.relay.test", timeout=30) as s:
    refused = s.sendmail("app@localhost", ["bob@localhost"], raw)
    if refused:
        sys.exit("refused: %r" % refused)
print("sent")
`
		out, code := runTool(t, python, "-c", script, srv.addr)
		if code != 0 || !strings.Contains(out, "sent") {
			t.Fatalf("python3 smtplib exit %d:\n%s", code, out)
		}
		checks = append(checks, interopCheck{strings.TrimPrefix(t.Name(), "TestInterop/"), "Subject: bare LF from smtplib\r\n", 1, func(t *testing.T, s stored) {
			if strings.Contains(strings.ReplaceAll(s.content, "\r\n", ""), "\n") || strings.Contains(strings.ReplaceAll(s.content, "\r\n", ""), "\r") {
				t.Errorf("the stored message has a bare LF or CR:\n%q", s.content)
			}
			if want := "\r\n\r\nline one\r\n.\r\n..two dots\r\n.three\r\nlast line\r\n"; !strings.Contains(s.content, want) {
				t.Errorf("the stored body is not the lines as written (%q):\n%q", want, s.content)
			}
		}})
	})

	srv.stop()
	all := readStored(t, data, users...)
	for _, c := range checks {
		t.Run(c.name+" stored", func(t *testing.T) {
			var found []stored
			for _, s := range all {
				if strings.Contains(s.content, c.marker) {
					found = append(found, s)
				}
			}
			if len(found) != c.count {
				t.Fatalf("%d stored messages carry %q, want %d", len(found), c.marker, c.count)
			}
			for _, s := range found {
				c.check(t, s)
			}
		})
	}
}

// checkWhole checks that a stored message is msg behind the relay's
// Received: header.
func checkWhole(t *testing.T, s stored, msg string) {
	t.Helper()
	if int64(len(s.content)) != s.size {
		t.Errorf("%d bytes stored in %s, size says %d", len(s.content), s.where, s.size)
	}
	if !strings.HasPrefix(s.content, "Received: ") {
		t.Errorf("the message in %s does not start with a Received: header:\n%.400s", s.where, s.content)
	}
	if !strings.HasSuffix(s.content, msg) {
		t.Errorf("the message in %s does not end with what was sent:\n%s", s.where, s.content)
	}
}

// TestBareNewlineReject: with --bare-newline reject the relay refuses what
// TestInterop's smtplib client sends with bare LF line ends, 550 5.6.0,
// and queues nothing.
func TestBareNewlineReject(t *testing.T) {
	t.Parallel()
	python := needTool(t, "python3")
	data := workDir(t)
	addUsers(t, data, "bob@localhost")
	srv := startServer(t, data, "--bare-newline", "reject")
	const script = `
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
raw = b"From: app@localhost\nTo: bob@localhost\nSubject: bare LF\n\nbody\n"
with smtplib.SMTP(host, int(port), local_hostname="python.e2e.relay.test", timeout=30) as s:
    try:
        s.sendmail("app@localhost", ["bob@localhost"], raw)
    except smtplib.SMTPDataError as e:
        print("refused", e.smtp_code, e.smtp_error.decode())
        sys.exit(0)
sys.exit("accepted")
`
	out, code := runTool(t, python, "-c", script, srv.addr)
	if code != 0 || !strings.Contains(out, "refused 550 5.6.0 ") {
		t.Fatalf("python3 smtplib exit %d, want the message refused with 550 5.6.0:\n%s", code, out)
	}
	srv.stop()
	if all := readStored(t, data, "bob@localhost"); len(all) != 0 {
		t.Errorf("%d messages stored, want none", len(all))
	}
}
