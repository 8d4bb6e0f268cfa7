package addr_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/relaymail/relay/internal/addr"
)

func TestParse(t *testing.T) {
	t.Parallel()
	long63 := strings.Repeat("a", 63)
	tests := []struct {
		in      string
		utf8ok  bool
		local   string
		domain  string
		err     error
		literal bool
	}{
		// RFC 5321 §4.1.2 Mailbox = Local-part "@" ( Domain / address-literal )
		{in: "user@localhost", local: "user", domain: "localhost"},
		{in: "a@b", local: "a", domain: "b"},
		{in: "First.Last+tag@Example.COM", local: "First.Last+tag", domain: "example.com"},
		{in: "x_y-z!#$%&'*/=?^`{|}~@mail-1.example.org", local: "x_y-z!#$%&'*/=?^`{|}~", domain: "mail-1.example.org"},
		{in: "user@xn--bcher-kva.example", local: "user", domain: "xn--bcher-kva.example"},
		{in: "user@123.example", local: "user", domain: "123.example"},
		{in: "user@" + long63 + ".test", local: "user", domain: long63 + ".test"},
		{in: strings.Repeat("l", 64) + "@localhost", local: strings.Repeat("l", 64), domain: "localhost"},
		// go-smtp hands over a quoted local part unquoted: the domain is
		// after the last '@', so "v@remote"@local stays local.
		{in: "v@remote@local", local: "v@remote", domain: "local"},
		{in: "a@b@c@Relay.Test", local: "a@b@c", domain: "relay.test"},
		{in: "john doe@localhost", err: addr.ErrSyntax}, // space even if quoted
		// RFC 5321 §4.1.3 address literals.
		{in: "user@[1.2.3.4]", local: "user", domain: "[1.2.3.4]", literal: true},
		{in: "user@[255.255.255.255]", local: "user", domain: "[255.255.255.255]", literal: true},
		{in: "user@[IPv6:::1]", local: "user", domain: "[ipv6:::1]", literal: true},
		{in: "user@[IPv6:2001:DB8::1]", local: "user", domain: "[ipv6:2001:db8::1]", literal: true},
		{in: "user@[ipv6:::ffff:1.2.3.4]", local: "user", domain: "[ipv6:::ffff:1.2.3.4]", literal: true},
		{in: "user@[999.1.1.1]", err: addr.ErrSyntax},
		{in: "user@[1.2.3]", err: addr.ErrSyntax},
		{in: "user@[1.2.3.4.5]", err: addr.ErrSyntax},
		{in: "user@[01.2.3.4]", err: addr.ErrSyntax},
		{in: "user@[::1]", err: addr.ErrSyntax},
		{in: "user@[IPv6:1.2.3.4]", err: addr.ErrSyntax},
		{in: "user@[IPv6:::g]", err: addr.ErrSyntax},
		{in: "user@[IPv6:]", err: addr.ErrSyntax},
		{in: "user@[1.2.3.4", err: addr.ErrSyntax},
		{in: "user@1.2.3.4]", err: addr.ErrSyntax},
		{in: "user@[]", err: addr.ErrSyntax},
		{in: "user@[", err: addr.ErrSyntax},
		// Bad domains.
		{in: "user@-bad-.com", err: addr.ErrSyntax},
		{in: "user@bad-.com", err: addr.ErrSyntax},
		{in: "user@-bad.com", err: addr.ErrSyntax},
		{in: "user@localhost.", err: addr.ErrSyntax},
		{in: "user@.localhost", err: addr.ErrSyntax},
		{in: "user@local..host", err: addr.ErrSyntax},
		{in: "user@exa mple", err: addr.ErrSyntax},
		{in: "user@loc_al", err: addr.ErrSyntax},
		{in: "user@local/host", err: addr.ErrSyntax},
		{in: "user@" + long63 + "a.test", err: addr.ErrSyntax},
		{in: "user@" + strings.Repeat(long63+".", 4) + "test", err: addr.ErrSyntax},
		// Not a mailbox at all.
		{in: "", err: addr.ErrSyntax},
		{in: "@", err: addr.ErrSyntax},
		{in: "user", err: addr.ErrSyntax},
		{in: "user@", err: addr.ErrSyntax},
		{in: "@localhost", err: addr.ErrSyntax},
		{in: "us\x00er@localhost", err: addr.ErrSyntax},
		{in: "us\ter@localhost", err: addr.ErrSyntax},
		{in: "user\x7f@localhost", err: addr.ErrSyntax},
		{in: "user\r\n@localhost", err: addr.ErrSyntax},
		{in: strings.Repeat("l", 257) + "@localhost", err: addr.ErrSyntax},
		// RFC 6531: UTF-8 only with SMTPUTF8.
		{in: "jösé@localhost", utf8ok: true, local: "jösé", domain: "localhost"},
		{in: "jösé@localhost", err: addr.ErrUTF8},
		{in: "user@bücher.example", utf8ok: true, local: "user", domain: "bücher.example"},
		{in: "user@BÜCHER.example", utf8ok: true, local: "user", domain: "bücher.example"},
		{in: "user@bücher.example", err: addr.ErrUTF8},
		{in: "用户@例子.测试", utf8ok: true, local: "用户", domain: "例子.测试"},
		{in: "用户@例子.测试", err: addr.ErrUTF8},
		{in: "user@localhost", utf8ok: true, local: "user", domain: "localhost"},
		{in: "\xff@localhost", utf8ok: true, err: addr.ErrSyntax},
		{in: "user@b\xffcher.example", utf8ok: true, err: addr.ErrSyntax},
		{in: "jösé@-bad-.example", err: addr.ErrSyntax}, // syntax first
	}
	for _, tt := range tests {
		a, err := addr.Parse(tt.in, tt.utf8ok)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("Parse(%q, %v) = %+v, %v; want error %v", tt.in, tt.utf8ok, a, err, tt.err)
			}
			if a != (addr.Address{}) {
				t.Errorf("Parse(%q, %v) returned %+v with its error", tt.in, tt.utf8ok, a)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q, %v): %v", tt.in, tt.utf8ok, err)
			continue
		}
		if a.Local != tt.local || a.Domain != tt.domain {
			t.Errorf("Parse(%q, %v) = %q @ %q, want %q @ %q", tt.in, tt.utf8ok, a.Local, a.Domain, tt.local, tt.domain)
		}
		if a.IsLiteral() != tt.literal {
			t.Errorf("Parse(%q).IsLiteral() = %v", tt.in, a.IsLiteral())
		}
		if want := tt.local + "@" + tt.domain; a.String() != want {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.in, a.String(), want)
		}
	}
}

func TestIsASCII(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		a    addr.Address
		want bool
	}{
		{addr.Address{Local: "user", Domain: "localhost"}, true},
		{addr.Address{Local: "jösé", Domain: "localhost"}, false},
		{addr.Address{Local: "user", Domain: "bücher.example"}, false},
	} {
		if got := tt.a.IsASCII(); got != tt.want {
			t.Errorf("%v.IsASCII() = %v", tt.a, got)
		}
	}
}

// TestParseIPv6Zone: RFC 5321 §4.1.3 IPv6-addr has no zone index; a zone
// names an interface of the sender's host and means nothing to us.
func TestParseIPv6Zone(t *testing.T) {
	t.Parallel()
	a, err := addr.Parse("user@[IPv6:fe80::1%eth0]", false)
	if err == nil {
		t.Fatalf("Parse accepted %q", a)
	}
}

// TestParseNonASCIIFoldsToASCII: RFC 6531 §3.4: without SMTPUTF8 an address
// with non-ASCII octets must be refused. Lower-casing must not turn a
// non-ASCII domain (KELVIN SIGN, LATIN CAPITAL I WITH DOT ABOVE) into a
// different ASCII one that then passes as ASCII.
func TestParseNonASCIIFoldsToASCII(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"user@\u212Aey.example", "user@\u0130nfo.example"} {
		a, err := addr.Parse(in, false)
		if err == nil {
			t.Fatalf("Parse(%q, false) = %q, want ErrUTF8", in, a)
		}
		if !errors.Is(err, addr.ErrUTF8) {
			t.Errorf("Parse(%q, false): %v, want ErrUTF8", in, err)
		}
	}
}

// FuzzParse: Parse never panics and fails only with its two errors,
// ErrUTF8 only without SMTPUTF8 and only for input that is otherwise
// valid. What it accepts is the input split at its last "@" with the
// domain lower-cased; the local part has no control or space (RFC 5321
// §4.1.2) and at most 256 bytes; the domain is an address literal or
// dot-separated labels of 1 to 63 letters, digits, hyphens (not at either
// end) or UTF-8, at most 255 bytes (RFC 5321 §4.1.3, §4.5.3.1); it is
// ASCII unless SMTPUTF8 was declared; it is accepted with SMTPUTF8 too;
// and it parses again to itself.
func FuzzParse(f *testing.F) {
	for _, s := range loadParseSeeds(f, "../../testdata/fuzz/FuzzParse") {
		f.Add(s.in, s.utf8ok)
	}
	f.Fuzz(func(t *testing.T, in string, utf8ok bool) {
		a, err := addr.Parse(in, utf8ok)
		if err != nil {
			if !errors.Is(err, addr.ErrSyntax) && !errors.Is(err, addr.ErrUTF8) {
				t.Fatalf("Parse(%q) returned unexpected error %v", in, err)
			}
			if errors.Is(err, addr.ErrUTF8) {
				if utf8ok {
					t.Fatalf("Parse(%q, true) = ErrUTF8", in)
				}
				if _, err := addr.Parse(in, true); err != nil {
					t.Fatalf("Parse(%q, false) = ErrUTF8 but Parse(%q, true): %v", in, in, err)
				}
			}
			if a != (addr.Address{}) {
				t.Fatalf("Parse(%q) returned %+v with its error", in, a)
			}
			return
		}
		checkAccepted(t, in, a, utf8ok)
		if !utf8ok {
			if b, err := addr.Parse(in, true); err != nil || b != a {
				t.Fatalf("Parse(%q, false) = %+v but Parse(%q, true) = %+v, %v", in, a, in, b, err)
			}
		}
		b, err := addr.Parse(a.String(), utf8ok)
		if err != nil {
			t.Fatalf("Parse(%q) = %q, but Parse(%q): %v", in, a, a.String(), err)
		}
		if b != a {
			t.Fatalf("Parse(%q) = %+v, but Parse(%q) = %+v", in, a, a.String(), b)
		}
	})
}

// checkAccepted checks the properties of an address Parse accepted.
func checkAccepted(t *testing.T, in string, a addr.Address, utf8ok bool) {
	t.Helper()
	at := strings.LastIndexByte(in, '@')
	if at < 0 || a.Local != in[:at] || a.Domain != strings.ToLower(in[at+1:]) {
		t.Fatalf("Parse(%q) = %q @ %q: not the input split at its last @", in, a.Local, a.Domain)
	}
	if !utf8.ValidString(a.String()) || a.Local == "" || len(a.Local) > 256 || len(a.Domain) > 255 {
		t.Fatalf("Parse(%q) = %+v", in, a)
	}
	for _, c := range []byte(a.Local) {
		if c < 0x21 || c == 0x7f {
			t.Fatalf("Parse(%q): local part %q holds byte %#x", in, a.Local, c)
		}
	}
	if !utf8ok && !a.IsASCII() {
		t.Fatalf("Parse(%q, false) accepted non-ASCII %q", in, a)
	}
	if a.IsLiteral() != strings.HasPrefix(a.Domain, "[") {
		t.Fatalf("Parse(%q): IsLiteral %v for domain %q", in, a.IsLiteral(), a.Domain)
	}
	if a.IsLiteral() {
		if !strings.HasSuffix(a.Domain, "]") {
			t.Fatalf("Parse(%q): literal %q", in, a.Domain)
		}
		return
	}
	for _, label := range strings.Split(a.Domain, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			t.Fatalf("Parse(%q): bad label %q in %q", in, label, a.Domain)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r >= 0x80) {
				t.Fatalf("Parse(%q): label %q holds %q", in, label, r)
			}
		}
	}
}

type parseSeed struct {
	in     string
	utf8ok bool
}

// loadParseSeeds reads corpus files of FuzzParse ("go test fuzz v1", then
// string(...) and bool(...)). They live at the module root, where go test
// does not look by itself.
func loadParseSeeds(tb testing.TB, dir string) []parseSeed {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		tb.Fatal(err)
	}
	var seeds []parseSeed
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 3 || lines[0] != "go test fuzz v1" {
			tb.Fatalf("%s: want a header, a string and a bool", f)
		}
		v, ok1 := strings.CutPrefix(lines[1], "string(")
		v, ok2 := strings.CutSuffix(v, ")")
		in, err := strconv.Unquote(v)
		if !ok1 || !ok2 || err != nil {
			tb.Fatalf("%s: bad string line %q", f, lines[1])
		}
		v, ok1 = strings.CutPrefix(lines[2], "bool(")
		v, ok2 = strings.CutSuffix(v, ")")
		utf8ok, err := strconv.ParseBool(v)
		if !ok1 || !ok2 || err != nil {
			tb.Fatalf("%s: bad bool line %q", f, lines[2])
		}
		seeds = append(seeds, parseSeed{in, utf8ok})
	}
	if len(seeds) == 0 {
		tb.Fatalf("no seeds in %s", dir)
	}
	return seeds
}
