package main

import (
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
	"text/tabwriter"
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
		var ms []*spool.Message
		err := withSpool(dir,
			func(c *admin.Client) error { return c.Call(ctx, "queue/list", struct{}{}, &ms) },
			func(sp *spool.Spool) error { ms, err = relay.ListQueue(sp); return err })
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, ms)
		}
		printQueue(stdout, ms, time.Now())
		return nil
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
		err := withSpool(dir,
			func(c *admin.Client) error { return c.Call(ctx, "queue/"+verb, req, nil) },
			func(sp *spool.Spool) error { return relay.QueueOp(sp, nil, verb, pos) })
		if err != nil {
			return err
		}
		if verb != "flush" {
			fmt.Fprintf(stdout, "%s: %d message(s)\n", verb, len(pos))
		}
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

// printQueue prints a table in the spirit of mailq: one line per message,
// then one indented line per recipient.
func printQueue(w io.Writer, ms []*spool.Message, now time.Time) {
	if len(ms) == 0 {
		fmt.Fprintln(w, "queue is empty")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tSIZE\tSENDER\tHOLD")
	for _, m := range ms {
		from := m.From
		if from == "" {
			from = "<>"
		}
		hold := ""
		if m.Hold {
			hold = "held"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.ID, age(now.Sub(m.Arrived)), size(m.Size), from, hold)
		for _, r := range m.Rcpts {
			next := ""
			if r.State == spool.Pending && !m.Hold {
				next = "due now"
				if d := r.NextAttempt.Sub(now); d > 0 {
					next = "next in " + age(d)
				}
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d tries\t%s\t%s\n", r.Address, r.State, r.Attempts, next, r.Reply)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "-- %d message(s)\n", len(ms))
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
