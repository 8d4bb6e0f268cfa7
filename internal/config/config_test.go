package config

import (
	"errors"
	"flag"
	"github.com/BurntSushi/toml"
	"os"
	"path/filepath"
	"reflect"
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
		{"negative min-free-space", func(c *Config) { c.MinFreeSpace = -1 }, "min-free-space"},
		{"min-free-space under max-message-size", func(c *Config) { c.MinFreeSpace = c.MaxMessageSize - 1 }, "min-free-space"},
		{"min-free-space of max-message-size", func(c *Config) { c.MinFreeSpace = c.MaxMessageSize }, ""},
		{"min-free-space default", func(c *Config) { c.MinFreeSpace = 0 }, ""},
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

// TestMinFree: 0 is computed from max-message-size, as the flag, the file
// and the default say; a set value is taken as it is.
func TestMinFree(t *testing.T) {
	t.Setenv("RELAY_DATA", "")
	for _, tc := range []struct {
		name string
		args []string
		want int64
	}{
		{"default", nil, 2*50<<20 + 64<<20},
		{"from max-message-size", []string{"--max-message-size", "1048576"}, 2<<20 + 64<<20},
		{"flag", []string{"--min-free-space", "500000000"}, 500000000},
		{"file", []string{"--config", writeFile(t, "min-free-space = 300000000\n")}, 300000000},
		{"flag beats file", []string{"--config", writeFile(t, "min-free-space = 300000000\n"), "--min-free-space", "0"}, 2*50<<20 + 64<<20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := FromArgs("test", tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.MinFree(); got != tc.want {
				t.Errorf("MinFree = %d, want %d", got, tc.want)
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

// TestSizes: sizes take binary units on flags and print with the largest
// unit that divides them, so `relay serve -h` reads 50MiB.
func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"52428800", 50 << 20, false},
		{"50MiB", 50 << 20, false},
		{"50M", 50 << 20, false},
		{"50m", 50 << 20, false},
		{"512K", 512 << 10, false},
		{"512kb", 512 << 10, false},
		{"1G", 1 << 30, false},
		{"0", 0, false},
		{"", 0, true},
		{"5 parsecs", 0, true},
		{"M", 0, true},
		{"9999999999999G", 0, true},
	} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
	for n, want := range map[int64]string{50 << 20: "50MiB", 256 << 20: "256MiB", 1 << 30: "1GiB", 3 << 10: "3KiB", 1536: "1536", 0: "0"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{4 * time.Hour: "4h", 30 * time.Minute: "30m", 90 * time.Second: "1m30s", 90 * time.Minute: "1h30m", 120 * time.Hour: "120h", 20 * time.Second: "20s"} {
		v := Duration(d)
		if got := v.String(); got != want {
			t.Errorf("Duration(%v).String() = %q, want %q", d, got, want)
		}
	}
}

// TestGoodFileShowsEveryKey: testdata/config/good.toml is the reference of
// every setting, so each key of Config must appear in it.
func TestGoodFileShowsEveryKey(t *testing.T) {
	var file map[string]any
	if _, err := toml.DecodeFile("../../testdata/config/good.toml", &file); err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		key := typ.Field(i).Tag.Get("toml")
		if _, ok := file[key]; !ok {
			t.Errorf("testdata/config/good.toml does not show the setting %q", key)
		}
	}
	var c Config = Default()
	if err := c.Load("../../testdata/config/good.toml"); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("good.toml does not validate: %v", err)
	}
}
