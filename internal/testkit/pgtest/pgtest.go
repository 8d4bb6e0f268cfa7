// Package pgtest starts a throwaway PostgreSQL cluster for tests: one per
// test binary, on a unix socket in a temporary directory, with fsync on, and
// a fresh database for each test that asks for one.
//
// PostgreSQL refuses to run as root, so as root the cluster runs as the
// postgres user (runuser). Tests skip when the server binaries are missing,
// unless RELAY_POSTGRES=1, where they fail: CI sets it after installing them.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a running throwaway PostgreSQL server.
type Cluster struct {
	dir     string // data directory and socket directory's parent
	sockDir string
	asUser  string // "postgres" when started as root, else ""
	pgctl   string
}

var (
	once    sync.Once
	shared  *Cluster
	errInit error
	dbSeq   atomic.Int64
)

// Main runs a package's tests and stops the shared cluster afterwards; call
// it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

// StopShared stops the test binary's cluster if one was started; a TestMain
// that does more than Main calls it after m.Run.
func StopShared() {
	if shared != nil {
		shared.Stop()
	}
}

// binaries finds initdb and pg_ctl on the PATH or in Debian's place.
func binaries() (initdb, pgctl string, err error) {
	for _, dir := range append([]string{""}, debianBins()...) {
		i, p := filepath.Join(dir, "initdb"), filepath.Join(dir, "pg_ctl")
		if dir == "" {
			var e1, e2 error
			i, e1 = exec.LookPath("initdb")
			p, e2 = exec.LookPath("pg_ctl")
			if e1 != nil || e2 != nil {
				continue
			}
		} else if _, err := os.Stat(i); err != nil {
			continue
		}
		return i, p, nil
	}
	return "", "", fmt.Errorf("PostgreSQL server binaries (initdb, pg_ctl) not found")
}

func debianBins() []string {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	return m
}

// URL returns the connection URL of a fresh, empty database on the shared
// cluster, dropped at the end of the test. It skips the test when
// PostgreSQL is not installed, unless RELAY_POSTGRES=1.
func URL(t testing.TB) string {
	t.Helper()
	c := Shared(t)
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	c.exec(t, "CREATE DATABASE "+name)
	t.Cleanup(func() { c.exec(nil, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	return c.URL(name)
}

// URLOn is URL for a database whose files live in dir, a tablespace of its
// own (the write-ahead log stays with the cluster): a test that fills dir
// fills the database's disk. The tablespace goes when the test ends, before
// cleanups registered earlier (the unmounting of dir) run.
func URLOn(t testing.TB, dir string) string {
	t.Helper()
	c := Shared(t)
	if c.asUser != "" {
		u, err := user.Lookup(c.asUser)
		if err != nil {
			t.Fatalf("pgtest: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	n := dbSeq.Add(1)
	space, name := fmt.Sprintf("ts%d_%d", os.Getpid(), n), fmt.Sprintf("t%d_%d", os.Getpid(), n)
	c.exec(t, fmt.Sprintf("CREATE TABLESPACE %s LOCATION '%s'", space, strings.ReplaceAll(dir, "'", "''")))
	t.Cleanup(func() { c.exec(nil, "DROP TABLESPACE IF EXISTS "+space) })
	c.exec(t, fmt.Sprintf("CREATE DATABASE %s TABLESPACE %s", name, space))
	t.Cleanup(func() { c.exec(nil, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	return c.URL(name)
}

// exec runs one statement as the superuser; a failure fails t, or is
// ignored when t is nil (cleanups).
func (c *Cluster) exec(t testing.TB, sql string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err == nil {
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
	}
	if err != nil && t != nil {
		t.Helper()
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// Shared returns the test binary's cluster, starting it on first use.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	once.Do(func() { shared, errInit = Start() })
	if errInit != nil {
		if os.Getenv("RELAY_POSTGRES") == "" && strings.Contains(errInit.Error(), "not found") {
			t.Skipf("pgtest: %v (RELAY_POSTGRES=1 makes this a failure)", errInit)
		}
		t.Fatalf("pgtest: %v", errInit)
	}
	return shared
}

// Start initializes and starts a new cluster.
func Start() (*Cluster, error) {
	initdb, pgctl, err := binaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "relay-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir, sockDir: filepath.Join(dir, "sock")}
	if os.Geteuid() == 0 {
		c.asUser = "postgres"
	}
	if err := os.Mkdir(c.sockDir, 0o777); err != nil {
		return nil, err
	}
	if c.asUser != "" {
		u, err := user.Lookup(c.asUser)
		if err != nil {
			return nil, fmt.Errorf("PostgreSQL runs as the %s user, which does not exist: %w", c.asUser, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, d := range []string{dir, c.sockDir} {
			if err := os.Chown(d, uid, gid); err != nil {
				return nil, err
			}
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := c.run(initdb, "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	c.pgctl = pgctl
	if err := c.Up(); err != nil {
		return nil, err
	}
	return c, nil
}

// Up starts the cluster's server (again).
func (c *Cluster) Up() error {
	opts := fmt.Sprintf("-k %s -c listen_addresses='' -c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_buffers=64MB", c.sockDir)
	out, err := c.run(c.pgctl, "-D", filepath.Join(c.dir, "data"), "-o", opts, "-l", filepath.Join(c.dir, "log"), "-w", "-t", "60", "start").CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(c.dir, "log"))
		return fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	return nil
}

// Down stops the cluster's server at once, keeping its data, as a crash or
// an operator would: clients see their connections drop.
func (c *Cluster) Down() error {
	if out, err := c.run(c.pgctl, "-D", filepath.Join(c.dir, "data"), "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

// Own starts a cluster for one test alone (one it may stop and start),
// removed when the test ends; it skips like URL.
func Own(t testing.TB) *Cluster {
	t.Helper()
	c, err := Start()
	if err != nil {
		if os.Getenv("RELAY_POSTGRES") == "" && strings.Contains(err.Error(), "not found") {
			t.Skipf("pgtest: %v (RELAY_POSTGRES=1 makes this a failure)", err)
		}
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

func (c *Cluster) run(bin string, args ...string) *exec.Cmd {
	if c.asUser != "" {
		return exec.Command("runuser", append([]string{"-u", c.asUser, "--", bin}, args...)...)
	}
	return exec.Command(bin, args...)
}

// URL is the connection URL of database db on the cluster.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres:///%s?host=%s&user=postgres", db, c.sockDir)
}

// Stop stops the cluster at once and removes its files.
func (c *Cluster) Stop() {
	_, pgctl, err := binaries()
	if err == nil {
		c.run(pgctl, "-D", filepath.Join(c.dir, "data"), "-m", "immediate", "-w", "stop").Run()
	}
	os.RemoveAll(c.dir)
}
