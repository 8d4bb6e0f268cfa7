// Package relay assembles the running relay: it opens the database, starts
// the SMTP listeners and the admin socket, and shuts them down in order.
// The protocol work lives in sub-packages (smtpd for ingress); this package
// only wires them and answers the operators' requests.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/internal/config"
	"github.com/relaymail/relay/internal/connlimit"
	"github.com/relaymail/relay/internal/diskspace"
	"github.com/relaymail/relay/internal/metrics"
	"github.com/relaymail/relay/internal/ratelimit"
	"github.com/relaymail/relay/internal/throttle"
	"github.com/relaymail/relay/internal/tlsconf"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/mailbox/imapd"
	"github.com/relaymail/relay/relay/deliver"
	"github.com/relaymail/relay/relay/remote"
	"github.com/relaymail/relay/relay/smtpd"
	"github.com/relaymail/relay/spool"
)

// Server is one running relay.
type Server struct {
	cfg     config.Config
	log     *slog.Logger
	store   *Storage
	spool   *spool.Spool
	boxes   *mailbox.Store
	certs   *tlsconf.Certs
	loop    *deliver.Loop
	remote  *remote.Transport
	metrics *metrics.Registry
	disk    *diskspace.Guard
	http    *http.Server
	httpLn  net.Listener

	smtps     []smtpListener
	imaps     []imapListener
	admin     *admin.Server
	adminLn   net.Listener
	listeners map[string]net.Addr
	// authThrottle is shared by every listener, so a guesser cannot reset
	// its delay by switching ports; so are the SMTP limits.
	authThrottle *throttle.Throttle
	smtpConns    *connlimit.Limiter
	// imapConns caps IMAP and IMAPS together, apart from SMTP, from the
	// same max-connections settings: a flood of IMAP connections must not
	// lock out mail senders, nor the reverse.
	imapConns        *connlimit.Limiter
	ipRate, userRate *ratelimit.Keyed
}

type imapListener struct {
	name string
	srv  *imapd.Server
	ln   net.Listener
}

type smtpListener struct {
	name string
	srv  *smtpd.Server
	ln   net.Listener
}

// New opens the data directory and binds every enabled listener, so that a
// port conflict or a locked database is reported before anything runs.
func New(cfg config.Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Data)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	_, statErr := os.Stat(dir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		log.Info("created data directory", "dir", dir)
	}
	log.Info("data directory", "dir", dir)
	st, err := OpenStorage(context.Background(), cfg.Store, dir, StoreOptions{Create: true, Migrate: true, Logger: log})
	if err != nil {
		return nil, err
	}
	if st.Postgres != nil {
		log.Info("store", "engine", "postgres", "node", st.Postgres.Node())
	}
	s := &Server{cfg: cfg, log: log, store: st, spool: spool.New(st, nil), boxes: mailbox.New(st, nil),
		listeners: map[string]net.Addr{}, authThrottle: throttle.New(time.Second, 15*time.Second)}
	// Recorded for `relay user add` while no server runs.
	if err := s.boxes.SetDomains(cfg.Domains); err != nil {
		st.Close()
		return nil, err
	}
	s.disk = diskspace.New(diskspace.Config{
		Dir:     cfg.Data,
		MinFree: uint64(cfg.MinFree()),
		Reserve: st.Reserve(),
		Log:     log.With("component", "diskspace"),
	})
	// Between the reserve and min-free-space the relay runs, refusing
	// mail; this first poll says so in the log.
	s.disk.Poll()
	// The mail log: one line per queue event, in the server's log.
	s.spool.SetMailLog(log)
	s.metrics = metrics.New(s.queueStats)
	s.smtpConns = connlimit.New(cfg.MaxConnections, cfg.MaxConnectionsPerIP)
	s.imapConns = connlimit.New(cfg.MaxConnections, cfg.MaxConnectionsPerIP)
	s.ipRate = ratelimit.New(cfg.IPMessageRate, 0)
	s.userRate = ratelimit.New(cfg.UserMessageRate, 0)
	s.spool.OnEvent(s.countEvent)
	s.certs, err = tlsconf.Load(cfg.TLSCert, cfg.TLSKey, cfg.Data, cfg.Hostname)
	if err != nil {
		st.Close()
		return nil, err
	}
	transports := map[string]string{}
	for _, t := range cfg.Transport {
		d, hp, _ := config.ParseTransport(t) // checked by Validate
		transports[d] = hp
	}
	s.remote = remote.New(remote.Config{
		Hostname:       cfg.Hostname,
		Transports:     transports,
		Relayhost:      cfg.Relayhost,
		RelayUser:      cfg.RelayhostUser,
		RelayPassword:  cfg.RelayhostPassword,
		DNS:            cfg.DNS,
		PerDestination: cfg.DestinationConcurrency,
	}, s.spool, log.With("component", "remote"))
	s.loop = deliver.New(deliver.Config{
		Domains:     slices.Clone(cfg.Domains),
		RetryFirst:  time.Duration(cfg.RetryFirst),
		RetryMax:    time.Duration(cfg.RetryMax),
		Lifetime:    time.Duration(cfg.QueueLifetime),
		DelayNotice: time.Duration(cfg.DelayNotice),
		Hostname:    cfg.Hostname,
		Workers:     cfg.DeliveryWorkers,
		Lease:       time.Duration(cfg.LeaseTime),
		LocalPaused: s.disk.Critical,
	}, s.spool, s.boxes, s.remote, log.With("component", "deliver"))
	if err := s.listen(); err != nil {
		s.closeListeners()
		st.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) listen() error {
	var err error
	s.adminLn, err = admin.Listen(admin.Socket(s.cfg.Data))
	if err != nil {
		return err
	}
	s.admin = admin.NewServer(s.log)
	s.registerAdmin()

	if !config.Off(s.cfg.HTTP) {
		s.httpLn, err = net.Listen("tcp", s.cfg.HTTP)
		if err != nil {
			return fmt.Errorf("http listener: %w", err)
		}
		s.listeners["http"] = s.httpLn.Addr()
		var h http.Handler = metrics.Handler(s.metrics, s.healthy, s.log)
		if s.cfg.PProf {
			h = withPProf(h)
		}
		s.http = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	}

	for _, l := range []struct {
		name, addr         string
		submission, direct bool
	}{
		{"smtp", s.cfg.SMTP, false, false},
		{"submission", s.cfg.Submission, true, false},
		{"submissions", s.cfg.Submissions, true, true},
	} {
		if config.Off(l.addr) {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("%s listener: %w", l.name, err)
		}
		s.listeners[l.name] = ln.Addr()
		ln = s.metrics.Listener(ln, l.name)
		bareNL, err := smtpd.ParseBareNewline(s.cfg.BareNewline)
		if err != nil {
			return err
		}
		srv := smtpd.New(smtpd.Config{
			Hostname:        s.cfg.Hostname,
			Domains:         slices.Clone(s.cfg.Domains),
			MaxMessageBytes: s.cfg.MaxMessageSize,
			MaxRecipients:   s.cfg.MaxRecipients,
			CommandTimeout:  time.Duration(s.cfg.SMTPTimeout),
			DataIdleTimeout: time.Duration(s.cfg.SMTPTimeout),
			DataTimeout:     time.Duration(s.cfg.DataTimeout),
			TLS:             s.certs.Config(),
			ImplicitTLS:     l.direct,
			Submission:      l.submission,
			Accounts:        s.boxes,
			Throttle:        s.authThrottle,
			Metrics:         s.metrics,
			Conns:           s.smtpConns,
			IPRate:          s.ipRate,
			UserRate:        s.userRate,
			MaxErrors:       s.cfg.MaxErrors,
			SessionTimeout:  time.Duration(s.cfg.SessionTimeout),
			MaxLineLength:   s.cfg.MaxLineLength,
			Space:           s.disk,
			BareNewline:     bareNL,
		}, s.spool, s.log.With("listener", l.name))
		s.smtps = append(s.smtps, smtpListener{l.name, srv, ln})
	}
	for _, l := range []struct {
		name, addr string
		direct     bool
	}{
		{"imap", s.cfg.IMAP, false},
		{"imaps", s.cfg.IMAPS, true},
	} {
		if config.Off(l.addr) {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("%s listener: %w", l.name, err)
		}
		s.listeners[l.name] = ln.Addr()
		ln = s.metrics.Listener(ln, l.name)
		tlsCfg := s.certs.Config()
		if l.direct {
			ln = tls.NewListener(ln, tlsCfg)
			tlsCfg = nil
		}
		srv := imapd.New(imapd.Config{
			TLS:         tlsCfg,
			Throttle:    s.authThrottle,
			AppendLimit: uint32(min(s.cfg.MaxMessageSize, 1<<32-1)),
			Log:         s.log.With("listener", l.name),
			Metrics:     s.metrics,
			Space:       s.disk,
			Conns:       s.imapConns,
		}, s.boxes)
		s.imaps = append(s.imaps, imapListener{l.name, srv, ln})
	}
	return nil
}

func (s *Server) closeListeners() {
	for _, l := range s.smtps {
		l.ln.Close()
	}
	for _, l := range s.imaps {
		l.ln.Close()
	}
	if s.adminLn != nil {
		s.adminLn.Close()
	}
	if s.httpLn != nil {
		s.httpLn.Close()
	}
}

// Addr returns the bound address of a listener ("smtp"), or nil when off.
func (s *Server) Addr(name string) net.Addr { return s.listeners[name] }

// Spool returns the server's queue.
func (s *Server) Spool() *spool.Spool { return s.spool }

// Mailboxes returns the server's mailbox store.
func (s *Server) Mailboxes() *mailbox.Store { return s.boxes }

// Deliverer returns the delivery loop (for test hooks).
func (s *Server) Deliverer() *deliver.Loop { return s.loop }

// every runs fn every interval until stop is closed.
func every(interval time.Duration, stop <-chan struct{}, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			fn()
		}
	}
}

// releaseCold gives the kernel back the database's cold file pages, and
// debug.FreeOSMemory the heap that a burst left free. Without them a queue of 100,000
// deferred messages kept about 1 GiB resident after the burst that queued
// them, half in mapped database files, half in Badger's pooled table
// builders, which the collector only frees when something allocates again.
//
// The file pages go every releaseEvery: at full speed Badger finishes a
// 16 MiB value-log file every second or so, and with a release every 10 s
// seven of them were resident at a time (peak RSS 410-480 MiB while
// queueing 100,000 messages, 280-300 MiB with 2 s). The heap goes every
// freeEvery only, since each return costs a full collection and the page
// faults of growing again.
func (s *Server) releaseCold() {
	if s.store.Badger == nil {
		return
	}
	if _, err := s.store.Badger.ReleaseCold(); err != nil {
		s.log.Warn("releasing cold database pages failed", "error", err)
	}
}

// collectGarbage runs the value log's garbage collection unless the disk is
// below the store's reserve: the collection writes the live bodies of a file
// anew before it deletes the file, and may start a value-log file for them.
func (s *Server) collectGarbage() {
	if s.store.Badger == nil {
		return
	}
	if s.disk.Critical() {
		s.log.Warn("value-log garbage collection skipped: disk space below the database's reserve")
		return
	}
	s.store.Badger.CollectGarbage()
}

// preallocator returns the watcher's step before each poll: back the
// database files Badger made since the last one. A failure is logged when
// it first happens, not at every poll.
func (s *Server) preallocator() func() {
	last := ""
	return func() {
		if s.store.Badger == nil {
			return
		}
		err := s.store.Badger.Preallocate()
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != last && err != nil {
			s.log.Error("cannot back database files with disk blocks; a full disk may now crash the relay", "error", err)
		}
		last = msg
	}
}

// pruneEvents deletes expired events from a PostgreSQL store.
func (s *Server) pruneEvents() {
	if s.store.Postgres == nil {
		return
	}
	if err := s.store.Postgres.PruneEvents(context.Background()); err != nil {
		s.log.Warn("pruning old events failed", "error", err)
	}
}

const (
	releaseEvery = 2 * time.Second
	freeEvery    = 10 * time.Second
)

// Run serves until ctx is cancelled, then stops accepting, lets sessions in
// flight finish (bounded by ShutdownGrace) and closes the database.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	serve := func(name string, addr net.Addr, fn func() error) {
		if addr != nil {
			s.log.Info("listening", "listener", name, "addr", addr.String())
		}
		wg.Go(func() {
			if err := fn(); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	serve("admin", nil, func() error { return s.admin.Serve(s.adminLn) })
	s.log.Info("listening", "listener", "admin", "socket", admin.Socket(s.cfg.Data))
	for _, l := range s.smtps {
		serve(l.name, s.listeners[l.name], func() error { return l.srv.Serve(l.ln) })
	}
	for _, l := range s.imaps {
		serve(l.name, s.listeners[l.name], func() error { return l.srv.Serve(l.ln) })
	}
	if s.http != nil {
		serve("http", s.listeners["http"], func() error {
			if err := s.http.Serve(s.httpLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	stopGC := make(chan struct{})
	wg.Go(func() { every(10*time.Minute, stopGC, s.collectGarbage) })
	wg.Go(func() { every(pruneEvery, stopGC, s.pruneEvents) })
	wg.Go(func() { every(releaseEvery, stopGC, s.releaseCold) })
	wg.Go(func() { every(freeEvery, stopGC, debug.FreeOSMemory) })
	loopCtx, stopLoop := context.WithCancel(context.Background())
	wg.Go(func() { s.loop.Run(loopCtx) })
	wg.Go(func() { s.disk.Watch(loopCtx, s.preallocator()) })

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	var sw sync.WaitGroup
	for _, l := range s.smtps {
		sw.Go(func() { l.srv.Shutdown(sctx) })
	}
	sw.Wait()
	// IMAP sessions hold no transaction open between commands; closing
	// them drops idle clients, which reconnect.
	for _, l := range s.imaps {
		l.ln.Close()
		l.srv.Close()
	}
	s.admin.Shutdown(sctx)
	if s.http != nil {
		s.http.Shutdown(sctx)
	}
	stopLoop()
	close(stopGC)
	s.remote.Close()
	wg.Wait()
	if err := s.closeDB(); err != nil && runErr == nil {
		runErr = err
	}
	os.Remove(admin.Socket(s.cfg.Data))
	s.log.Info("stopped")
	return runErr
}

// closeDB closes the database, unless the disk is below the store's
// reserve. Closing flushes the memtable into a new table, a file that a full
// disk cannot back, and the copy into it would fault (SIGBUS). Everything
// committed is in the memtable's log, so the database is then only synced
// and left as a crash leaves it: the next open replays the log.
func (s *Server) closeDB() error {
	if s.store.Badger == nil || !s.disk.Critical() {
		if err := s.store.Close(); err != nil {
			return fmt.Errorf("close database: %w", err)
		}
		return nil
	}
	s.log.Warn("disk space below the database's reserve: database synced but not closed; the next start recovers it from its log")
	if err := s.store.Badger.Sync(); err != nil {
		return fmt.Errorf("sync database: %w", err)
	}
	return nil
}

// Reload applies a re-read configuration (SIGHUP): the TLS certificate is
// read again, from the new files if they changed, and the log level set
// through level; every other setting takes effect at the next start, and
// each one that changed is logged so that the operator knows. A bad new
// configuration changes nothing.
func (s *Server) Reload(cfg config.Config, level *slog.LevelVar) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	certs, err := tlsconf.Load(cfg.TLSCert, cfg.TLSKey, cfg.Data, cfg.Hostname)
	if err != nil {
		return err
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("log-level: %w", err)
	}
	s.certs.Replace(certs)
	if level != nil {
		level.Set(lv)
	}
	for _, k := range config.Changed(s.cfg, cfg, "tls-cert", "tls-key", "log-level") {
		s.log.Warn("reload: setting needs a restart to take effect", "setting", k)
	}
	s.log.Info("reloaded", "tls-cert", cfg.TLSCert, "log-level", cfg.LogLevel)
	return nil
}

// ShutdownGrace bounds how long Run waits for sessions in flight.
const ShutdownGrace = 10 * time.Second

// queueStats feeds the queue gauges of /metrics.
func (s *Server) queueStats() (int, time.Time, error) {
	n, err := s.spool.Count()
	if err != nil {
		return 0, time.Time{}, err
	}
	oldest, err := s.spool.Oldest()
	return n, oldest, err
}

// countEvent turns committed delivery events into metrics.
func (s *Server) countEvent(ev spool.Event) {
	switch ev.Event {
	case spool.EventDelivered, spool.EventDeferred, spool.EventBounced:
		s.metrics.Delivery(ev.Event, time.Duration(ev.Delay*float64(time.Second)))
	}
}

// healthy is /healthz: the database answers a read.
func (s *Server) healthy() error {
	_, err := s.spool.Oldest()
	return err
}

// withPProf adds the runtime profiles under /debug/pprof/ (--pprof): for
// finding bottlenecks on a running relay, off by default since profiles show
// internals.
func withPProf(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
