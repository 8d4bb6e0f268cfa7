package badger

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bdg "github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"
)

// blocks returns a file's size and the bytes of disk blocks it holds.
func blocks(t *testing.T, path string) (size, allocated int64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Size, st.Blocks * 512
}

// makeSparse creates path as a sparse file of size bytes.
func makeSparse(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// TestPreallocateDir: every sparse file that Badger maps gets its blocks,
// with its size and content unchanged; other files are left as they are.
func TestPreallocateDir(t *testing.T) {
	dir := t.TempDir()
	files := []struct {
		name   string
		size   int64
		backed bool // after preallocateDir
	}{
		{"000001.vlog", 4 << 20, true},
		{"00002.mem", 8 << 20, true},
		{"000003.sst", 1 << 20, true},
		{"DISCARD", 1 << 20, true},
		{"MANIFEST", 1 << 20, false},
		{"KEYREGISTRY", 1 << 20, false},
		{"notes.txt", 1 << 20, false},
		{"000004.vlog", 0, true},
	}
	for _, f := range files {
		makeSparse(t, filepath.Join(dir, f.name), f.size)
	}
	if _, alloc := blocks(t, filepath.Join(dir, "000001.vlog")); alloc >= 4<<20 {
		t.Skipf("the filesystem of %s makes no sparse files", dir)
	}
	// A file written in full is not touched (and not opened).
	full := bytes.Repeat([]byte("x"), 64<<10)
	if err := os.WriteFile(filepath.Join(dir, "000005.sst"), full, 0o644); err != nil {
		t.Fatal(err)
	}
	// A directory with a mapped file's name is not a file.
	if err := os.Mkdir(filepath.Join(dir, "000006.sst"), 0o755); err != nil {
		t.Fatal(err)
	}

	if err := preallocateDir(dir); err != nil {
		t.Fatalf("preallocateDir: %v", err)
	}
	for _, f := range files {
		size, alloc := blocks(t, filepath.Join(dir, f.name))
		if size != f.size {
			t.Errorf("%s: size %d after preallocation, want %d", f.name, size, f.size)
		}
		if backed := alloc >= size; backed != f.backed {
			t.Errorf("%s: %d of %d bytes allocated, want backed=%v", f.name, alloc, size, f.backed)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "000001.vlog"))
	if err != nil || len(b) != 4<<20 || bytes.ContainsFunc(b, func(r rune) bool { return r != 0 }) {
		t.Errorf("000001.vlog after preallocation: %d bytes, %v; want 4 MiB of zeros", len(b), err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "000005.sst")); !bytes.Equal(b, full) {
		t.Error("a written table changed")
	}
}

// sparseFiles lists the files Badger maps in dir that lack blocks.
func sparseFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if !mapped(e.Name()) {
			continue
		}
		if size, alloc := blocks(t, filepath.Join(dir, e.Name())); alloc < size {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestOpenPreallocates: the files Badger makes sparse at open (the memtable
// log, the value-log file) are backed when Open returns, and the file it
// makes when the value log rolls over is backed by the next Preallocate.
func TestOpenPreallocates(t *testing.T) {
	dir := t.TempDir()
	probe := filepath.Join(dir, "probe")
	makeSparse(t, probe, 1<<20)
	if _, alloc := blocks(t, probe); alloc >= 1<<20 {
		t.Skipf("the filesystem of %s makes no sparse files", dir)
	}
	os.Remove(probe)

	db, err := Open(dir, Options{Sync: SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var mems, vlogs int
	for _, e := range must(os.ReadDir(dir)) {
		switch filepath.Ext(e.Name()) {
		case ".mem":
			mems++
		case ".vlog":
			vlogs++
		}
	}
	if mems == 0 || vlogs == 0 {
		t.Fatalf("after Open: %d memtable logs, %d value-log files; want some of each", mems, vlogs)
	}
	if s := sparseFiles(t, dir); len(s) > 0 {
		t.Fatalf("after Open, sparse: %v", s)
	}

	// Past valueLogFileSize of bodies, Badger starts a new value-log file.
	chunk := bytes.Repeat([]byte("b"), BodyChunk)
	for i := range valueLogFileSize/BodyChunk + 2 {
		err := db.Update(func(txn *bdg.Txn) error { return txn.Set([]byte{'k', byte(i)}, chunk) })
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(must(filepath.Glob(filepath.Join(dir, "*.vlog")))); n <= vlogs {
		t.Fatalf("%d value-log files after %d MiB, want a new one", n, valueLogFileSize>>20)
	}
	if s := sparseFiles(t, dir); len(s) == 0 {
		t.Fatal("no sparse file after the value log rolled over: nothing to preallocate")
	}
	if err := db.Preallocate(); err != nil {
		t.Fatal(err)
	}
	if s := sparseFiles(t, dir); len(s) > 0 {
		t.Errorf("after Preallocate, sparse: %v", s)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestPreallocateNoSpace: on a filesystem too small for a file, the error
// says so (ErrNoSpace). It mounts a small tmpfs, so it runs as root only.
func TestPreallocateNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	makeSparse(t, filepath.Join(dir, "000001.vlog"), 2<<20)
	makeSparse(t, filepath.Join(dir, "000002.vlog"), 16<<20)
	err := preallocateDir(dir)
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "000002.vlog") {
		t.Fatalf("preallocateDir on a 4 MiB filesystem with a 16 MiB file: %v, want ErrNoSpace naming the file", err)
	}
	if size, alloc := blocks(t, filepath.Join(dir, "000001.vlog")); alloc < size {
		t.Errorf("the file that fits: %d of %d bytes allocated", alloc, size)
	}
}
