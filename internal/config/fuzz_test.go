package config

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzLoad writes arbitrary bytes as the configuration file and loads it
// as `relay serve --config` does. Load and Validate never panic; a file
// error names the file and reaches the CLI as a FileError (exit 1, not
// bad usage); and a configuration Validate accepts has every address
// splittable and every limit positive, since the servers rely on that.
func FuzzLoad(f *testing.F) {
	for _, seed := range loadTOMLSeeds(f, "../../testdata/fuzz/FuzzLoad") {
		f.Add(seed)
	}
	for _, name := range []string{"good.toml", "bad-address.toml", "bad-unknown-key.toml"} {
		if b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "config", name)); err == nil {
			f.Add(b)
		}
	}
	path := filepath.Join(f.TempDir(), "relay.toml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c := Default()
		if err := c.Load(path); err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("Load error does not name the file: %v", err)
			}
			_, _, ferr := FromArgs("serve", []string{"--config", path})
			var fe *FileError
			if !errors.As(ferr, &fe) {
				t.Fatalf("FromArgs with a bad file: %v, want a FileError", ferr)
			}
			return
		}
		if err := c.Validate(); err != nil {
			return
		}
		for _, a := range []string{c.SMTP, c.Submission, c.Submissions, c.IMAP, c.IMAPS, c.HTTP, c.Relayhost, c.DNS} {
			if _, _, err := net.SplitHostPort(a); !Off(a) && err != nil {
				t.Fatalf("Validate accepted listener %q: %v", a, err)
			}
		}
		for _, tr := range c.Transport {
			if _, _, err := ParseTransport(tr); err != nil {
				t.Fatalf("Validate accepted transport %q: %v", tr, err)
			}
		}
		if c.MaxMessageSize <= 0 || c.MaxRecipients <= 0 || c.Data == "" || c.Hostname == "" || len(c.Domains) == 0 {
			t.Fatalf("Validate accepted %+v", c)
		}
	})
}

// loadTOMLSeeds reads corpus files of FuzzLoad ("go test fuzz v1", then
// one []byte(...) line).
func loadTOMLSeeds(tb testing.TB, dir string) [][]byte {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		tb.Fatal(err)
	}
	var seeds [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" {
			tb.Fatalf("%s: want a header and one []byte(...) line", f)
		}
		v, ok1 := strings.CutPrefix(lines[1], "[]byte(")
		v, ok2 := strings.CutSuffix(v, ")")
		s, err := strconv.Unquote(v)
		if !ok1 || !ok2 || err != nil {
			tb.Fatalf("%s: bad value line", f)
		}
		seeds = append(seeds, []byte(s))
	}
	if len(seeds) == 0 {
		tb.Fatalf("no seeds in %s", dir)
	}
	return seeds
}
