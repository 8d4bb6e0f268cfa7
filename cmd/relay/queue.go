package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/internal/config"
	"github.com/relaymail/relay/relay"
	"github.com/relaymail/relay/spool"
)

// clientFlags are the flags every subcommand but serve shares.
type clientFlags struct {
	data  string
	file  string
	store string
}

func (c *clientFlags) bind(fs *flag.FlagSet) {
	def := config.Default()
	c.data, c.store = def.Data, def.Store
	fs.StringVar(&c.data, "data", c.data, "data directory (env RELAY_DATA)")
	fs.StringVar(&c.file, "config", "", "TOML configuration file (for its data and store settings)")
	fs.StringVar(&c.store, "store", c.store, "storage: badger or a postgres:// URL (env RELAY_STORE)")
}

// where is the data directory and store a client command works on.
type where struct{ dir, store string }

// resolve resolves --data and --store against the config file: an explicit
// flag wins, then the environment, then the file's setting, then the
// default.
func (c *clientFlags) resolve(fs *flag.FlagSet) (where, error) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	w := where{dir: c.data, store: c.store}
	if c.file == "" {
		return w, config.CheckStore(w.store)
	}
	cfg := config.Default()
	if err := cfg.Load(c.file); err != nil {
		return where{}, err
	}
	if !set["data"] {
		w.dir = cmp.Or(os.Getenv("RELAY_DATA"), cfg.Data)
	}
	if !set["store"] {
		w.store = cmp.Or(os.Getenv("RELAY_STORE"), cfg.Store)
	}
	return w, config.CheckStore(w.store)
}

// withSpool runs remote against the running server, or, when none answers on
// the socket, local against the spool on the store opened directly.
func withSpool(w where, remote func(*admin.Client) error, local func(*spool.Spool) error) error {
	return withStore(w, false, remote, func(st *relay.Storage) error { return local(spool.New(st, nil)) })
}

// withStore runs remote against the running server, or, when none answers
// on the socket, local against the store opened directly (Badger allows one
// process at a time, so it cannot be opened beside a running server;
// PostgreSQL can). With create, a missing Badger database is made and the
// user told where (an operator may add users before the first start);
// without, a missing one is an error that names the directory, since a
// relative --data run from the wrong directory would otherwise work on a
// new, empty database.
func withStore(w where, create bool, remote func(*admin.Client) error, local func(*relay.Storage) error) error {
	err := remote(admin.NewClient(admin.Socket(w.dir)))
	if !errors.Is(err, admin.ErrNoServer) {
		return err
	}
	abs, err := filepath.Abs(w.dir)
	if err != nil {
		return fmt.Errorf("data directory %s: %w", w.dir, err)
	}
	_, statErr := os.Stat(abs)
	_, err = os.Stat(filepath.Join(abs, "MANIFEST"))
	fresh := err != nil && !relay.IsPostgres(w.store)
	st, err := relay.OpenStorage(context.Background(), w.store, abs, relay.StoreOptions{Create: create})
	if err != nil {
		return err
	}
	err = local(st)
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	switch {
	case fresh && err != nil && errors.Is(statErr, os.ErrNotExist):
		// Nothing was made but an empty database: take it back, so a
		// refused command leaves no directory behind.
		os.RemoveAll(abs)
	case fresh && err == nil:
		fmt.Fprintf(os.Stderr, "relay: created the data directory %s\n", abs)
	}
	return err
}

func queueCmd(args []string, stdout, _ io.Writer) error {
	if len(args) == 0 {
		return usagef("queue: a verb is needed (list, show, tail, flush, hold, release, delete, bounce)")
	}
	verb, args := args[0], args[1:]
	fs := flag.NewFlagSet("relay queue "+verb, flag.ContinueOnError)
	var cf clientFlags
	cf.bind(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	withBody := fs.Bool("body", false, "show: print the body too")
	tailN := fs.Int("n", 10, "tail: how many past events to show")
	follow := fs.Bool("f", false, "tail: keep showing new events as they happen")
	var list relay.ListRequest
	fs.IntVar(&list.Limit, "limit", 0, "list: show at most `N` messages (0: all)")
	fs.StringVar(&list.State, "state", "", "list: only messages with a recipient in `STATE`: "+strings.Join(relay.ListStates, ", "))
	fs.StringVar(&list.Domain, "domain", "", "list: only messages with a recipient in `DOMAIN`")
	fs.DurationVar(&list.OlderThan, "older-than", 0, "list: only messages queued at least this long ago (`DURATION`, e.g. 30m, 2h)")
	pos, err := config.ParseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	dir, err := cf.resolve(fs)
	if err != nil {
		return err
	}
	ctx := context.Background()
	switch verb {
	case "list":
		if len(pos) > 0 {
			return usagef("queue list takes no arguments")
		}
		if err := list.Check(); err != nil {
			return usagef("queue list: %v", err)
		}
		return queueList(ctx, dir, list, *asJSON, stdout)
	case "show":
		if len(pos) != 1 {
			return usagef("queue show takes one queue ID")
		}
		req := relay.ShowRequest{ID: pos[0], Body: *withBody}
		var sh *relay.Shown
		err := withSpool(dir,
			func(c *admin.Client) error { return c.Call(ctx, "queue/show", req, &sh) },
			func(sp *spool.Spool) error { sh, err = relay.ShowMessage(sp, req.ID, req.Body); return err })
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, sh)
		}
		printShown(stdout, sh)
		return nil
	case "tail":
		if len(pos) > 0 {
			return usagef("queue tail takes no arguments")
		}
		return tail(ctx, dir, relay.TailRequest{N: *tailN, Follow: *follow}, *asJSON, stdout)
	case "flush", "hold", "release", "delete", "bounce":
		if len(pos) == 0 && verb != "flush" {
			return usagef("queue %s takes one or more queue IDs", verb)
		}
		req := relay.IDsRequest{IDs: pos}
		var rep relay.OpReply
		err := withSpool(dir,
			func(c *admin.Client) error { return c.Call(ctx, "queue/"+verb, req, &rep) },
			func(sp *spool.Spool) error { rep.Done, err = relay.QueueOp(sp, nil, verb, pos); return err })
		if err != nil {
			return err
		}
		if verb == "flush" {
			fmt.Fprintf(stdout, "flush: %d message(s), every pending recipient due now (held messages stay held)\n", rep.Done)
			return nil
		}
		fmt.Fprintf(stdout, "%s: %d message(s)\n", verb, rep.Done)
		return nil
	default:
		return usagef("queue: unknown verb %q", verb)
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// queueList prints the messages req selects as they come from the server
// (or from the database when none runs), holding one at a time: a JSON
// array, or a listing in the spirit of mailq, one line per message, then
// one indented line per recipient.
func queueList(ctx context.Context, dir where, req relay.ListRequest, asJSON bool, stdout io.Writer) error {
	w := bufio.NewWriterSize(stdout, 64<<10)
	var p queuePrinter
	jl := &jsonList{w: w}
	if asJSON {
		p = jl
	} else {
		p = &textList{w: w, now: time.Now(), filtered: req != relay.ListRequest{}}
	}
	err := withSpool(dir,
		func(c *admin.Client) error {
			r, err := c.Stream(ctx, "queue/list", req)
			if err != nil {
				return err
			}
			defer r.Close()
			if asJSON {
				// The server's JSON goes out as it came, only indented:
				// nothing to decode.
				return readStream(r, "queue list", jl.raw)
			}
			return readStream(r, "queue list", p.message)
		},
		func(sp *spool.Spool) error { return relay.ListQueue(sp, req, time.Now(), p.message) })
	if err != nil {
		w.Flush()
		return err
	}
	p.end(req.Limit)
	return w.Flush()
}

// queuePrinter writes a queue listing one message at a time.
type queuePrinter interface {
	message(m *spool.Message) error
	// end closes the listing; limit is the --limit it ran with.
	end(limit int)
}

// jsonList writes the array that json.MarshalIndent would, element by
// element.
type jsonList struct {
	w   *bufio.Writer
	n   int
	buf bytes.Buffer
}

func (l *jsonList) message(m *spool.Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return l.raw(b)
}

// raw writes one element given as compact JSON; indented, it is what
// json.MarshalIndent makes of the value.
func (l *jsonList) raw(b json.RawMessage) error {
	if l.n == 0 {
		l.w.WriteString("[\n  ")
	} else {
		l.w.WriteString(",\n  ")
	}
	l.n++
	l.buf.Reset()
	if err := json.Indent(&l.buf, b, "  ", "  "); err != nil {
		return err
	}
	_, err := l.buf.WriteTo(l.w)
	return err
}

func (l *jsonList) end(int) {
	if l.n == 0 {
		l.w.WriteString("[]\n")
		return
	}
	l.w.WriteString("\n]\n")
}

// textList writes the listing for people. Columns have fixed widths, so
// that no line waits for the widest one further down.
type textList struct {
	w        *bufio.Writer
	now      time.Time
	filtered bool
	n        int
}

func (l *textList) message(m *spool.Message) error {
	if l.n == 0 {
		fmt.Fprintf(l.w, "%-26s  %6s  %7s  %s\n", "ID", "AGE", "SIZE", "SENDER")
	}
	l.n++
	from := m.From
	if from == "" {
		from = "<>"
	}
	hold := ""
	if m.Hold {
		hold = "  held"
	}
	fmt.Fprintf(l.w, "%-26s  %6s  %7s  %s%s\n", m.ID, age(l.now.Sub(m.Arrived)), size(m.Size), from, hold)
	for i := range m.Rcpts {
		r := &m.Rcpts[i]
		state := relay.RcptState(m, r, l.now)
		fmt.Fprintf(l.w, "  %s  %s, %d tries", r.Address, state, r.Attempts)
		switch state {
		case "due":
			l.w.WriteString(", due now")
		case "deferred":
			fmt.Fprintf(l.w, ", next in %s", age(r.NextAttempt.Sub(l.now)))
		}
		if !r.Reply.IsZero() {
			fmt.Fprintf(l.w, ": %s", r.Reply)
		}
		l.w.WriteByte('\n')
	}
	return nil
}

func (l *textList) end(limit int) {
	switch {
	case l.n == 0 && !l.filtered:
		fmt.Fprintln(l.w, "queue is empty")
	case l.n == 0:
		fmt.Fprintln(l.w, "no queued message matches")
	case limit > 0 && l.n == limit:
		fmt.Fprintf(l.w, "-- %d message(s), stopped at --limit %d\n", l.n, limit)
	default:
		fmt.Fprintf(l.w, "-- %d message(s)\n", l.n)
	}
}

func printShown(w io.Writer, sh *relay.Shown) {
	m := sh.Message
	fmt.Fprintf(w, "id:       %s\narrived:  %s\nclient:   %s (helo %s)\nfrom:     <%s>\nsize:     %d\n",
		m.ID, m.Arrived.Local().Format(time.RFC3339), m.ClientIP, m.Helo, m.From, m.Size)
	if m.Hold {
		fmt.Fprintln(w, "hold:     yes")
	}
	for _, r := range m.Rcpts {
		fmt.Fprintf(w, "rcpt:     <%s> %s, %d attempt(s), next %s", r.Address, r.State, r.Attempts, r.NextAttempt.Local().Format(time.RFC3339))
		if !r.Reply.IsZero() {
			fmt.Fprintf(w, ", last error: %s", r.Reply)
		}
		fmt.Fprintln(w)
	}
	if len(sh.History) > 0 {
		fmt.Fprintln(w, "\nhistory:")
		for _, ev := range sh.History {
			fmt.Fprintln(w, "  "+formatEvent(ev))
		}
	}
	fmt.Fprintln(w)
	fmt.Fprint(w, strings.ReplaceAll(sh.Headers, "\r\n", "\n"))
	if sh.Body != "" {
		fmt.Fprint(w, strings.ReplaceAll(sh.Body, "\r\n", "\n"))
	}
}

func age(d time.Duration) string {
	neg := ""
	if d < 0 {
		neg, d = "-", -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%s%ds", neg, int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%s%dm", neg, int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%s%dh", neg, int(d.Hours()))
	default:
		return fmt.Sprintf("%s%dd", neg, int(d.Hours()/24))
	}
}

func size(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%dB", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1fK", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	}
}
