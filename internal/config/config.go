// Package config holds the relay's settings: the embedded defaults, the TOML
// file (--config), the RELAY_DATA environment variable and command-line
// flags, applied in that order so that each later source overrides the
// earlier ones. The TOML keys are the flag names.
package config

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is every setting of `relay serve`.
type Config struct {
	Data string `toml:"data"`
	// Store picks the storage engine: "badger" (embedded, in Data) or a
	// postgres:// URL of a database several relay nodes share.
	Store       string   `toml:"store"`
	Hostname    string   `toml:"hostname"`
	Domains     []string `toml:"domain"`
	SMTP        string   `toml:"smtp"`
	Submission  string   `toml:"submission"`
	Submissions string   `toml:"submissions"`
	IMAP        string   `toml:"imap"`
	IMAPS       string   `toml:"imaps"`
	HTTP        string   `toml:"http"`
	TLSCert     string   `toml:"tls-cert"`
	TLSKey      string   `toml:"tls-key"`
	Relayhost   string   `toml:"relayhost"`
	// RelayhostUser and RelayhostPassword authenticate to the smarthost;
	// they live in the file only, never on a command line.
	RelayhostUser     string   `toml:"relayhost-user"`
	RelayhostPassword string   `toml:"relayhost-password"`
	Transport         []string `toml:"transport"`
	DNS               string   `toml:"dns"`

	MaxMessageSize int64    `toml:"max-message-size"`
	MaxRecipients  int      `toml:"max-recipients"`
	SMTPTimeout    Duration `toml:"smtp-timeout"`
	DataTimeout    Duration `toml:"data-timeout"`

	// Abuse limits, with Postfix's defaults where it has one.
	MaxConnections      int      `toml:"max-connections"`
	MaxConnectionsPerIP int      `toml:"max-connections-per-ip"`
	IPMessageRate       int      `toml:"ip-message-rate"`
	UserMessageRate     int      `toml:"user-message-rate"`
	MaxErrors           int      `toml:"max-errors"`
	SessionTimeout      Duration `toml:"session-timeout"`
	MaxLineLength       int      `toml:"max-line-length"`
	// BareNewline is what becomes of a bare LF in message data: normalize
	// (stored as CRLF) or reject (550 5.6.0).
	BareNewline string `toml:"bare-newline"`

	// DeliveryWorkers bounds the messages in delivery at once;
	// DestinationConcurrency the connections to one destination.
	DeliveryWorkers int `toml:"delivery-workers"`
	// LeaseTime is how long a node holds claimed work before another
	// node may take it over (several nodes on one PostgreSQL store).
	LeaseTime              Duration `toml:"lease-time"`
	DestinationConcurrency int      `toml:"destination-concurrency"`

	RetryFirst    Duration `toml:"retry-first"`
	RetryMax      Duration `toml:"retry-max"`
	QueueLifetime Duration `toml:"queue-lifetime"`
	DelayNotice   Duration `toml:"delay-notice"`

	// MinFreeSpace is the free disk space, in bytes, below which new mail
	// is refused (Postfix's queue_minfree); 0 means MinFree's default.
	MinFreeSpace int64 `toml:"min-free-space"`

	// MemoryLimit is the Go heap's soft limit in bytes (runtime/debug
	// SetMemoryLimit); 0 leaves the runtime's default. GOMEMLIMIT, when
	// set, wins.
	MemoryLimit int64 `toml:"memory-limit"`

	// PProf serves the runtime profiles on the HTTP listener.
	PProf bool `toml:"pprof"`

	LogFormat string `toml:"log-format"`
	LogLevel  string `toml:"log-level"`
}

// Default returns the embedded defaults of DESIGN.md: everything on loopback,
// so that `relay serve` runs as any user on one machine.
func Default() Config {
	data := os.Getenv("RELAY_DATA")
	if data == "" {
		data = "./relay-data"
	}
	return Config{
		Data:           data,
		Store:          cmp.Or(os.Getenv("RELAY_STORE"), "badger"),
		Hostname:       "localhost",
		Domains:        []string{"localhost"},
		SMTP:           "127.0.0.1:2525",
		Submission:     "127.0.0.1:2587",
		Submissions:    "off",
		IMAP:           "127.0.0.1:2143",
		IMAPS:          "off",
		HTTP:           "127.0.0.1:8025",
		MaxMessageSize: 50 << 20,
		MaxRecipients:  1000,
		SMTPTimeout:    Duration(5 * time.Minute),
		DataTimeout:    Duration(30 * time.Minute),
		// Postfix: default_process_limit 100 smtpd processes, each one
		// session; a goroutine per session is cheaper, so more.
		MaxConnections: 1000,
		// Postfix: smtpd_client_connection_count_limit = 50.
		MaxConnectionsPerIP: 50,
		// Postfix: smtpd_client_message_rate_limit = 0 (no limit).
		IPMessageRate:   0,
		UserMessageRate: 0,
		// Postfix: smtpd_hard_error_limit = 20.
		MaxErrors:      20,
		SessionTimeout: Duration(time.Hour),
		// Postfix splits lines past line_length_limit = 2048; the relay
		// refuses them, past a limit twice RFC 5322's 998.
		MaxLineLength: 2000,
		// Postfix 3.9: smtpd_forbid_bare_newline = normalize.
		BareNewline:     "normalize",
		DeliveryWorkers: 32,
		LeaseTime:       Duration(2 * time.Minute),
		// Postfix: default_destination_concurrency_limit = 20.
		DestinationConcurrency: 20,
		RetryFirst:             Duration(5 * time.Minute),
		RetryMax:               Duration(time.Hour),
		QueueLifetime:          Duration(5 * 24 * time.Hour),
		DelayNotice:            Duration(4 * time.Hour),
		// Badger's table builders and the collector's headroom otherwise
		// let the heap double under a queueing burst; the limit makes the
		// collector run harder instead, well before a small VM swaps.
		MemoryLimit: 256 << 20,
		LogFormat:   "text",
		LogLevel:    "info",
	}
}

// Load reads a TOML file over c. Unknown keys are an error, so that a typo
// does not silently fall back to a default.
func (c *Config) Load(path string) error {
	md, err := toml.DecodeFile(path, c)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if un := md.Undecoded(); len(un) > 0 {
		keys := make([]string, len(un))
		for i, k := range un {
			keys[i] = k.String()
		}
		return fmt.Errorf("config %s: unknown setting(s) %s", path, strings.Join(keys, ", "))
	}
	return nil
}

// Changed returns the TOML names of the settings that differ between a and b,
// leaving out those in except.
func Changed(a, b Config, except ...string) []string {
	var out []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	for i := range va.NumField() {
		name := va.Type().Field(i).Tag.Get("toml")
		if slices.Contains(except, name) {
			continue
		}
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, name)
		}
	}
	return out
}

// MinFree is the min-free-space that applies: the setting, or when it is 0,
// room for two messages of the largest size (a message accepted just above
// the floor takes its size in the queue and again in a mailbox when it is
// delivered) plus 64 MiB for the database's own growth. The store's reserve
// still applies beneath it.
func (c *Config) MinFree() int64 {
	if c.MinFreeSpace > 0 {
		return c.MinFreeSpace
	}
	return 2*c.MaxMessageSize + 64<<20
}

// Off reports whether a listener address disables the listener.
func Off(addr string) bool { return addr == "" || addr == "off" }

// Validate checks the settings and says what to fix.
func (c *Config) Validate() error {
	var errs []error
	if c.Data == "" {
		errs = append(errs, errors.New("data: must name a directory"))
	}
	if err := CheckStore(c.Store); err != nil {
		errs = append(errs, err)
	}
	if c.Hostname == "" {
		errs = append(errs, errors.New("hostname: must not be empty"))
	}
	if len(c.Domains) == 0 {
		errs = append(errs, errors.New("domain: at least one local domain is needed"))
	}
	for _, l := range []struct{ name, addr string }{
		{"smtp", c.SMTP}, {"submission", c.Submission}, {"submissions", c.Submissions},
		{"imap", c.IMAP}, {"imaps", c.IMAPS}, {"http", c.HTTP}, {"relayhost", c.Relayhost}, {"dns", c.DNS},
	} {
		if Off(l.addr) {
			continue
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not HOST:PORT (or off)", l.name, l.addr))
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("tls-cert and tls-key go together"))
	}
	for _, t := range c.Transport {
		if _, _, err := ParseTransport(t); err != nil {
			errs = append(errs, err)
		}
	}
	if c.MaxMessageSize <= 0 {
		errs = append(errs, errors.New("max-message-size: must be positive"))
	}
	if c.MaxRecipients <= 0 {
		errs = append(errs, errors.New("max-recipients: must be positive"))
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"max-connections", c.MaxConnections}, {"max-connections-per-ip", c.MaxConnectionsPerIP},
		{"ip-message-rate", c.IPMessageRate}, {"user-message-rate", c.UserMessageRate}} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must be 0 (no limit) or more", n.name))
		}
	}
	if c.MinFreeSpace < 0 || (c.MinFreeSpace > 0 && c.MinFreeSpace < c.MaxMessageSize) {
		// Postfix asks queue_minfree for 1.5 x message_size_limit: a
		// message accepted at the floor must not take all there is.
		errs = append(errs, errors.New("min-free-space: must be 0 (default: 2 x max-message-size + 64 MiB) or at least max-message-size"))
	}
	if c.MemoryLimit < 0 {
		errs = append(errs, errors.New("memory-limit: must be 0 (runtime default) or a size in bytes"))
	}
	if c.LeaseTime < Duration(time.Second) {
		errs = append(errs, errors.New("lease-time: must be at least 1s"))
	}
	if c.DeliveryWorkers <= 0 || c.DestinationConcurrency <= 0 {
		errs = append(errs, errors.New("delivery-workers, destination-concurrency: must be positive"))
	}
	if c.MaxErrors <= 0 {
		errs = append(errs, errors.New("max-errors: must be positive"))
	}
	if c.MaxLineLength < 512 {
		// RFC 5321 §4.5.3.1.4: a command line may be 512 octets.
		errs = append(errs, errors.New("max-line-length: must be at least 512"))
	}
	if c.SessionTimeout <= 0 || c.SMTPTimeout <= 0 || c.DataTimeout <= 0 {
		errs = append(errs, errors.New("smtp-timeout, data-timeout, session-timeout: must be positive"))
	}
	if c.BareNewline != "normalize" && c.BareNewline != "reject" {
		errs = append(errs, fmt.Errorf("bare-newline: %q is not normalize or reject", c.BareNewline))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("log-format: %q is not text or json", c.LogFormat))
	}
	return errors.Join(errs...)
}

// CheckStore validates a store setting: badger, or a postgres:// URL.
func CheckStore(store string) error {
	if store == "badger" || strings.HasPrefix(store, "postgres://") || strings.HasPrefix(store, "postgresql://") {
		return nil
	}
	return fmt.Errorf("store: %q is neither badger nor a postgres:// URL", store)
}

// FileError is a problem with the configuration file (not with the command
// line), which the CLI reports as a user error rather than bad usage.
type FileError struct{ Err error }

func (e *FileError) Error() string { return e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// ParseTransport splits a DOMAIN=HOST:PORT transport entry.
func ParseTransport(s string) (domain, hostport string, err error) {
	domain, hostport, ok := strings.Cut(s, "=")
	if ok {
		_, _, err = net.SplitHostPort(hostport)
	}
	if !ok || domain == "" || err != nil {
		return "", "", fmt.Errorf("transport: %q is not DOMAIN=HOST:PORT", s)
	}
	return strings.ToLower(domain), hostport, nil
}

// Duration is a time.Duration written as "5m" or "4h" in TOML and on flags.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler for TOML.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// String implements flag.Value: "4h" and "30m" rather than time's
// "4h0m0s".
func (d *Duration) String() string {
	s := time.Duration(*d).String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// Set implements flag.Value.
func (d *Duration) Set(s string) error { return d.UnmarshalText([]byte(s)) }

// list is a repeatable flag whose first use replaces what the file set.
type list struct {
	v   *[]string
	set bool
}

func (l *list) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l *list) Set(s string) error {
	if !l.set {
		*l.v = nil
		l.set = true
	}
	*l.v = append(*l.v, s)
	return nil
}

// sizeValue is a flag holding a size in bytes, given as a number with an
// optional binary unit (50MiB, 512K, 1G) and shown with the largest unit that
// divides it, so that `relay serve -h` reads "50MiB" rather than 52428800.
type sizeValue struct{ p *int64 }

func (v sizeValue) String() string {
	if v.p == nil {
		return "0"
	}
	return FormatSize(*v.p)
}

func (v sizeValue) Set(s string) error {
	n, err := ParseSize(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

var sizeUnits = []struct {
	name  string
	shift uint
}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}}

// FormatSize writes n bytes with the largest binary unit that divides it.
func FormatSize(n int64) string {
	for _, u := range sizeUnits {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// ParseSize reads a byte count: digits, then optionally K, KiB, M, MiB, G or
// GiB (any case; all binary, as in FormatSize).
func ParseSize(s string) (int64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.ToLower(strings.TrimSpace(s[len(num):]))
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (a number of bytes, or with K, M or G)", s)
	}
	var shift uint
	switch strings.TrimSuffix(strings.TrimSuffix(unit, "b"), "i") {
	case "":
	case "k":
		shift = 10
	case "m":
		shift = 20
	case "g":
		shift = 30
	default:
		return 0, fmt.Errorf("%q: unknown unit %q (use K, M or G)", s, unit)
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n << shift, nil
}

// Bind registers the serve flags on fs, writing into c.
func (c *Config) Bind(fs *flag.FlagSet) {
	fs.StringVar(&c.Data, "data", c.Data, "data directory (env RELAY_DATA)")
	fs.StringVar(&c.Store, "store", c.Store, "storage: badger (in the data directory) or a postgres:// URL (env RELAY_STORE)")
	fs.StringVar(&c.Hostname, "hostname", c.Hostname, "host name in greetings and Received: headers")
	fs.Var(&list{v: &c.Domains}, "domain", "local `domain` (repeatable)")
	fs.StringVar(&c.SMTP, "smtp", c.SMTP, "relay SMTP listener, no AUTH, local domains only (or off)")
	fs.StringVar(&c.Submission, "submission", c.Submission, "submission listener, STARTTLS and AUTH (or off)")
	fs.StringVar(&c.Submissions, "submissions", c.Submissions, "submission listener with implicit TLS (or off)")
	fs.StringVar(&c.IMAP, "imap", c.IMAP, "IMAP listener, STARTTLS (or off)")
	fs.StringVar(&c.IMAPS, "imaps", c.IMAPS, "IMAP listener with implicit TLS (or off)")
	fs.StringVar(&c.HTTP, "http", c.HTTP, "HTTP listener for /metrics and /healthz (or off)")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "TLS certificate (PEM); default: self-signed in the data dir")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "TLS private key (PEM)")
	fs.StringVar(&c.Relayhost, "relayhost", c.Relayhost, "smarthost HOST:PORT for remote mail")
	fs.Var(&list{v: &c.Transport}, "transport", "`DOMAIN=HOST:PORT` route (repeatable)")
	fs.StringVar(&c.DNS, "dns", c.DNS, "DNS resolver HOST:PORT (default: the system's)")
	fs.Var(sizeValue{&c.MaxMessageSize}, "max-message-size", "largest message, a `size` in bytes or with K, M, G")
	fs.IntVar(&c.MaxRecipients, "max-recipients", c.MaxRecipients, "most recipients per message")
	fs.Var(&c.SMTPTimeout, "smtp-timeout", "how long an SMTP client may stay idle between commands, a `duration` such as 30s, 5m, 4h")
	fs.Var(&c.DataTimeout, "data-timeout", "how long one DATA or BDAT transfer may take in all, a `duration` such as 30s, 5m, 4h")
	fs.IntVar(&c.MaxConnections, "max-connections", c.MaxConnections, "most SMTP connections at once, and apart from them as many IMAP ones (0: no limit)")
	fs.IntVar(&c.MaxConnectionsPerIP, "max-connections-per-ip", c.MaxConnectionsPerIP, "most SMTP connections from one address, IPv6 per /64, and apart from them as many IMAP ones (0: no limit)")
	fs.IntVar(&c.IPMessageRate, "ip-message-rate", c.IPMessageRate, "most messages a minute from one address (0: no limit)")
	fs.IntVar(&c.UserMessageRate, "user-message-rate", c.UserMessageRate, "most messages a minute from one authenticated account (0: no limit)")
	fs.IntVar(&c.MaxErrors, "max-errors", c.MaxErrors, "refused commands before a session is ended")
	fs.Var(&c.SessionTimeout, "session-timeout", "longest SMTP session, a `duration` such as 30s, 5m, 4h")
	fs.IntVar(&c.MaxLineLength, "max-line-length", c.MaxLineLength, "longest SMTP command or message line")
	fs.Var(sizeValue{&c.MinFreeSpace}, "min-free-space", "free disk space below which new mail is refused, a `size` (0: 2 x max-message-size + 64MiB)")
	fs.Var(sizeValue{&c.MemoryLimit}, "memory-limit", "soft limit of the Go heap, a `size` (0: runtime default)")
	fs.StringVar(&c.BareNewline, "bare-newline", c.BareNewline, "a bare LF in message data: normalize (store it as CRLF) or reject")
	fs.IntVar(&c.DeliveryWorkers, "delivery-workers", c.DeliveryWorkers, "messages in delivery at once")
	fs.Var(&c.LeaseTime, "lease-time", "how long a node holds claimed work before another node may take it over, a `duration`")
	fs.IntVar(&c.DestinationConcurrency, "destination-concurrency", c.DestinationConcurrency, "most connections to one destination")
	fs.Var(&c.RetryFirst, "retry-first", "delay before the first retry, a `duration` such as 30s, 5m, 4h")
	fs.Var(&c.RetryMax, "retry-max", "longest delay between retries, a `duration` such as 30s, 5m, 4h")
	fs.Var(&c.QueueLifetime, "queue-lifetime", "how long a message is retried before it bounces, a `duration` such as 30s, 5m, 4h")
	fs.Var(&c.DelayNotice, "delay-notice", "when the sender is told of a delay, a `duration` such as 30s, 5m, 4h")
	fs.BoolVar(&c.PProf, "pprof", c.PProf, "serve runtime profiles at /debug/pprof/ on the HTTP listener")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn, error")
}

// FromArgs builds the configuration of `relay serve` and `relay config
// check`: defaults, then the --config file, then RELAY_DATA, then the flags
// in args. It returns the positional arguments.
func FromArgs(name string, args []string) (Config, []string, error) {
	// First pass: find --config (and reject bad flags) without a file.
	probe := Default()
	var file string
	fs := newFlagSet(name, &probe, &file)
	if _, err := ParseInterleaved(fs, args); err != nil {
		return Config{}, nil, err
	}
	c := Default()
	if file != "" {
		if err := c.Load(file); err != nil {
			return Config{}, nil, &FileError{err}
		}
		if env := os.Getenv("RELAY_DATA"); env != "" {
			c.Data = env
		}
		if env := os.Getenv("RELAY_STORE"); env != "" {
			c.Store = env
		}
	}
	fs = newFlagSet(name, &c, &file)
	pos, err := ParseInterleaved(fs, args)
	if err != nil {
		return Config{}, nil, err
	}
	return c, pos, nil
}

func newFlagSet(name string, c *Config, file *string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(file, "config", "", "TOML configuration file")
	c.Bind(fs)
	return fs
}

// ParseInterleaved parses flags that may stand before or after positional
// arguments (`relay user add a@b --password-stdin`), which the flag package
// alone stops at the first positional.
func ParseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		// flag stops after "--": everything behind it is positional.
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
