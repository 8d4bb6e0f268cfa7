// Command relay-bench generates SMTP and IMAP load against a mail server
// (the relay, Postfix, Dovecot) and reports throughput and latency.
//
//	relay-bench smtp [flags]       send messages over concurrent SMTP sessions
//	relay-bench imap [flags]       run a mix of IMAP operations from concurrent clients
//	relay-bench imap-fill [flags]  fill INBOXes by APPEND
//
// Each prints progress to stderr about once a second and a summary at the
// end; -json prints the summary as one JSON object on stdout. Run
// "relay-bench MODE -h" for the flags of a mode.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/relaymail/relay/internal/loadgen"
)

const usage = `usage: relay-bench smtp|imap|imap-fill [flags]
  smtp       send messages over concurrent SMTP sessions (optionally until readable over IMAP)
  imap       run a mix of IMAP operations from concurrent clients
  imap-fill  fill INBOXes by APPEND up to a number of messages
"relay-bench MODE -h" lists the flags of a mode.
`

// errUsage marks a bad command line: exit status 2.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "relay-bench:", err)
		os.Exit(1)
	}
}

// run dispatches to a mode.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	modes := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"smtp":      runSMTP,
		"imap":      runIMAP,
		"imap-fill": runFill,
	}
	mode, ok := modes[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "relay-bench: unknown mode %q\n%s", args[0], usage)
		return errUsage
	}
	return mode(ctx, args[1:], stdout, stderr)
}

// output holds the flags every mode has.
type output struct {
	json  bool
	quiet bool
}

func (o *output) register(fs *flag.FlagSet) {
	fs.BoolVar(&o.json, "json", false, "print the summary as one JSON object on stdout")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress lines on stderr")
}

// progress is where progress lines go, or nil.
func (o *output) progress(stderr io.Writer) io.Writer {
	if o.quiet {
		return nil
	}
	return stderr
}

// textSummary is a summary that prints for people.
type textSummary interface{ WriteText(io.Writer) error }

func (o *output) print(stdout io.Writer, s textSummary) error {
	if o.json {
		return loadgen.WriteJSON(stdout, s)
	}
	return s.WriteText(stdout)
}

// newFlagSet returns a flag set whose errors go to stderr.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("relay-bench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args and refuses positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

// sizeFlags are -size and -mix.
type sizeFlags struct {
	size string
	mix  string
}

func (s *sizeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.size, "size", "4096", "message size in bytes (4096, 4k, 1m)")
	fs.StringVar(&s.mix, "mix", "", `size mix with weights, e.g. "4k:70,64k:25,1m:5" (overrides -size)`)
}

func (s *sizeFlags) parse() (loadgen.Mix, error) {
	if s.mix != "" {
		return loadgen.ParseMix(s.mix)
	}
	n, err := loadgen.ParseSize(s.size)
	if err != nil {
		return nil, err
	}
	return loadgen.FixedMix(n), nil
}

// parseUsers reads -users: a number K for user0@domain .. user{K-1}@domain,
// or a comma-separated list of logins.
func parseUsers(s, domain string) ([]string, error) {
	if k, err := strconv.Atoi(s); err == nil {
		if k < 1 {
			return nil, fmt.Errorf("-users %d: want at least 1", k)
		}
		return userLogins(k, domain), nil
	}
	var out []string
	for u := range strings.SplitSeq(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-users %q: want a number or a list of logins", s)
	}
	return out, nil
}

func userLogins(k int, domain string) []string {
	out := make([]string, k)
	for i := range out {
		out[i] = loadgen.UserAddress(i, domain)
	}
	return out
}

// smtpFlags are the flags of relay-bench smtp.
type smtpFlags struct {
	cfg         loadgen.SMTPConfig
	sizes       sizeFlags
	auth        string
	waitIMAP    string
	imapPass    string
	waitMaildir string
	waitTimeout time.Duration
	out         output
}

func (f *smtpFlags) register(fs *flag.FlagSet) {
	c := &f.cfg
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:2525", "SMTP server HOST:PORT")
	fs.IntVar(&c.Concurrency, "c", 20, "concurrent sessions")
	fs.Int64Var(&c.Messages, "n", 1000, "messages in all")
	fs.BoolVar(&c.Pipelining, "pipelining", false, "send MAIL, RCPT and DATA without waiting for each reply (RFC 2920)")
	fs.IntVar(&c.Users, "users", 1, "spread recipients over K users: user0@DOMAIN .. user{K-1}@DOMAIN")
	fs.StringVar(&c.Domain, "domain", "localhost", "recipient domain")
	fs.IntVar(&c.Rcpts, "rcpts", 1, "recipients per message")
	fs.StringVar(&c.From, "from", "", "envelope sender (default: the -auth user, else bench@localhost)")
	fs.IntVar(&c.PerConn, "per-conn", 0, "messages per connection (0: no limit)")
	fs.DurationVar(&c.Timeout, "timeout", time.Minute, "timeout for one SMTP exchange")
	fs.StringVar(&f.auth, "auth", "", "USER:PASS for AUTH PLAIN (submission port)")
	fs.StringVar(&f.waitIMAP, "wait-imap", "", "after sending, wait until every message is readable over IMAP at HOST:PORT")
	fs.StringVar(&f.imapPass, "imap-pass", "", "IMAP password of the users, for -wait-imap")
	fs.StringVar(&f.waitMaildir, "wait-maildir", "", "after sending, wait until the Maildirs below DIR hold every message")
	fs.DurationVar(&f.waitTimeout, "wait-timeout", 10*time.Minute, "longest wait for delivery after sending")
	f.sizes.register(fs)
	f.out.register(fs)
}

// config completes the SMTP configuration from the flags.
func (f *smtpFlags) config(stderr io.Writer) (loadgen.SMTPConfig, error) {
	c := f.cfg
	mix, err := f.sizes.parse()
	if err != nil {
		return c, err
	}
	c.Mix = mix
	if f.auth != "" {
		user, pass, ok := strings.Cut(f.auth, ":")
		if !ok || user == "" {
			return c, fmt.Errorf("-auth %q: want USER:PASS", f.auth)
		}
		c.AuthUser, c.AuthPass = user, pass
	}
	if c.From == "" {
		c.From = "bench@localhost"
		if c.AuthUser != "" {
			c.From = c.AuthUser
		}
	}
	if f.waitIMAP != "" && f.waitMaildir != "" {
		return c, errors.New("-wait-imap and -wait-maildir exclude each other")
	}
	switch {
	case f.waitIMAP != "":
		c.Wait = &loadgen.IMAPWaiter{Addr: f.waitIMAP, Logins: userLogins(c.Users, c.Domain), Pass: f.imapPass, Timeout: f.waitTimeout}
	case f.waitMaildir != "":
		c.Wait = &loadgen.MaildirWaiter{Root: f.waitMaildir, Timeout: f.waitTimeout}
	}
	c.Progress = f.out.progress(stderr)
	return c, nil
}

func runSMTP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("smtp", stderr)
	var f smtpFlags
	f.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := f.config(stderr)
	if err != nil {
		return err
	}
	sum, err := loadgen.RunSMTP(ctx, cfg)
	if sum != nil {
		if perr := f.out.print(stdout, sum); perr != nil {
			return perr
		}
	}
	if err != nil {
		return err
	}
	if sum.Messages == 0 {
		return errors.New("no message was accepted")
	}
	return nil
}

func runIMAP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("imap", stderr)
	var (
		cfg          loadgen.IMAPConfig
		users, mix   string
		domain, pass string
		out          output
	)
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:2143", "IMAP server HOST:PORT")
	fs.IntVar(&cfg.Concurrency, "c", 20, "concurrent clients")
	fs.DurationVar(&cfg.Duration, "duration", 30*time.Second, "how long to run (unless -n)")
	fs.Int64Var(&cfg.Ops, "n", 0, "operations in all (0: run for -duration)")
	fs.StringVar(&users, "users", "10", "K users user0@DOMAIN .. user{K-1}@DOMAIN, or a comma-separated list of logins")
	fs.StringVar(&domain, "domain", "localhost", "domain of the numbered users")
	fs.StringVar(&pass, "pass", "", "password of the users")
	fs.StringVar(&mix, "ops", loadgen.DefaultOpMix, "operation mix with weights")
	fs.BoolVar(&cfg.ExpungeAppended, "expunge", true, "expunge each appended message again, so the mailbox keeps its size")
	out.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if cfg.Logins, err = parseUsers(users, domain); err != nil {
		return err
	}
	if cfg.Mix, err = loadgen.ParseOpMix(mix); err != nil {
		return err
	}
	cfg.Pass = pass
	cfg.Progress = out.progress(stderr)
	sum, err := loadgen.RunIMAP(ctx, cfg)
	if err != nil {
		return err
	}
	return out.print(stdout, sum)
}

func runFill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("imap-fill", stderr)
	var (
		cfg          loadgen.FillConfig
		users        string
		domain, pass string
		sizes        sizeFlags
		out          output
	)
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:2143", "IMAP server HOST:PORT")
	fs.IntVar(&cfg.Messages, "n", 10000, "fill each INBOX up to this many messages")
	fs.IntVar(&cfg.Concurrency, "c", 4, "concurrent connections")
	fs.StringVar(&users, "users", "10", "K users user0@DOMAIN .. user{K-1}@DOMAIN, or a comma-separated list of logins")
	fs.StringVar(&domain, "domain", "localhost", "domain of the numbered users")
	fs.StringVar(&pass, "pass", "", "password of the users")
	sizes.register(fs)
	out.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if cfg.Logins, err = parseUsers(users, domain); err != nil {
		return err
	}
	if cfg.Mix, err = sizes.parse(); err != nil {
		return err
	}
	cfg.Pass = pass
	cfg.Progress = out.progress(stderr)
	sum, err := loadgen.Fill(ctx, cfg)
	if err != nil {
		return err
	}
	if err := out.print(stdout, sum); err != nil {
		return err
	}
	if sum.Failed > 0 {
		return fmt.Errorf("%d appends failed", sum.Failed)
	}
	return nil
}
