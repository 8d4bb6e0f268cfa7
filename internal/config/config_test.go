package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "relay.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultIsValid(t *testing.T) {
	t.Setenv("RELAY_DATA", "")
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("embedded defaults do not validate: %v", err)
	}
	if c.Data != "./relay-data" || c.SMTP != "127.0.0.1:2525" || c.Submission != "127.0.0.1:2587" || !Off(c.Submissions) {
		t.Errorf("defaults differ from DESIGN.md: %+v", c)
	}
	if c.BareNewline != "normalize" {
		t.Errorf("bare-newline default %q, want normalize", c.BareNewline)
	}
	if time.Duration(c.RetryFirst) != 5*time.Minute || time.Duration(c.QueueLifetime) != 5*24*time.Hour {
		t.Errorf("retry defaults: %v %v", c.RetryFirst, c.QueueLifetime)
	}
}

// TestPrecedence: defaults < file < RELAY_DATA < flags, and a repeated flag
// replaces the file's list instead of adding to it.
func TestPrecedence(t *testing.T) {
	file := writeFile(t, `
data = "/from/file"
hostname = "file.example"
domain = ["a.example", "b.example"]
retry-first = "2m"
transport = ["c.example=127.0.0.1:25"]
bare-newline = "reject"
`)
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want func(c Config) bool
	}{
		{"file only", "", []string{"--config", file},
			func(c Config) bool {
				return c.Data == "/from/file" && c.Hostname == "file.example" &&
					slices.Equal(c.Domains, []string{"a.example", "b.example"}) && time.Duration(c.RetryFirst) == 2*time.Minute
			}},
		{"env beats file", "/from/env", []string{"--config", file},
			func(c Config) bool { return c.Data == "/from/env" }},
		{"flag beats env", "/from/env", []string{"--config", file, "--data", "/from/flag"},
			func(c Config) bool { return c.Data == "/from/flag" }},
		{"flags after positionals", "", []string{"pos", "--config", file, "--hostname", "flag.example"},
			func(c Config) bool { return c.Hostname == "flag.example" }},
		{"repeated flag replaces list", "", []string{"--config", file, "--domain", "x.example", "--domain", "y.example"},
			func(c Config) bool { return slices.Equal(c.Domains, []string{"x.example", "y.example"}) }},
		{"bare-newline from the file", "", []string{"--config", file},
			func(c Config) bool { return c.BareNewline == "reject" }},
		{"bare-newline flag beats file", "", []string{"--config", file, "--bare-newline", "normalize"},
			func(c Config) bool { return c.BareNewline == "normalize" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("RELAY_DATA", tc.env)
			c, _, err := FromArgs("test", tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(c) {
				t.Errorf("got %+v", c)
			}
		})
	}
}

func TestFileErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"unknown key", `smtpp = "1.2.3.4:25"`, "smtpp"},
		{"bad duration", `retry-first = "soon"`, "retry-first"},
		{"not toml", `data = `, "relay.toml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := FromArgs("test", []string{"--config", writeFile(t, tc.text)})
			var fe *FileError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a FileError naming %q", err, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"listener not host:port", func(c *Config) { c.SMTP = "2525" }, "smtp"},
		{"off is fine", func(c *Config) { c.IMAP = "off" }, ""},
		{"cert without key", func(c *Config) { c.TLSCert = "c.pem" }, "tls-key"},
		{"bad transport", func(c *Config) { c.Transport = []string{"example.org"} }, "transport"},
		{"no domain", func(c *Config) { c.Domains = nil }, "domain"},
		{"bad log format", func(c *Config) { c.LogFormat = "xml" }, "log-format"},
		{"negative memory limit", func(c *Config) { c.MemoryLimit = -1 }, "memory-limit"},
		{"memory limit off", func(c *Config) { c.MemoryLimit = 0 }, ""},
		{"no delivery workers", func(c *Config) { c.DeliveryWorkers = 0 }, "delivery-workers"},
		{"bare-newline reject", func(c *Config) { c.BareNewline = "reject" }, ""},
		{"bad bare-newline", func(c *Config) { c.BareNewline = "fix" }, "bare-newline"},
		{"empty bare-newline", func(c *Config) { c.BareNewline = "" }, "bare-newline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestParseInterleaved(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	force := fs.Bool("force", false, "")
	pos, err := ParseInterleaved(fs, []string{"del", "--force", "a@b", "--", "--not-a-flag"})
	if err != nil {
		t.Fatal(err)
	}
	if !*force || !slices.Equal(pos, []string{"del", "a@b", "--not-a-flag"}) {
		t.Fatalf("force=%v pos=%q", *force, pos)
	}
}
