package badger

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	bdg "github.com/dgraph-io/badger/v4"
)

func TestDBMappings(t *testing.T) {
	maps := strings.Join([]string{
		"7f0000000000-7f0004000000 rw-s 00000000 08:01 1234                       /data/relay/000001.vlog",
		"7f0004000000-7f0004200000 r--s 00000000 08:01 1235                       /data/relay/000002.sst",
		"7f0004200000-7f0004400000 rw-s 00000000 08:01 1236                       /data/relay/sub/000003.sst",
		"7f0004400000-7f0004600000 rw-s 00000000 08:01 1237                       /data/relay-other/000004.sst",
		"7f0004600000-7f0004800000 rw-p 00000000 00:00 0 ",
		"7f0004800000-7f0004a00000 rw-s 00000000 08:01 1238                       /data/my relay/000005.vlog",
		"7f0004a00000-7f0004a00000 rw-s 00000000 08:01 1239                       /data/relay/000006.sst",
		"bogus line",
		"zz-yy rw-s 00000000 08:01 1240 /data/relay/000007.sst",
	}, "\n")
	got := func(dir string) []string {
		var out []string
		for _, m := range dbMappings([]byte(maps), dir) {
			out = append(out, fmt.Sprintf("%x-%x %s", m.start, m.end, m.path))
		}
		return out
	}
	for _, tc := range []struct {
		dir  string
		want []string
	}{
		{"/data/relay", []string{
			"7f0000000000-7f0004000000 /data/relay/000001.vlog",
			"7f0004000000-7f0004200000 /data/relay/000002.sst",
		}},
		{"/data/my relay", []string{"7f0004800000-7f0004a00000 /data/my relay/000005.vlog"}},
		{"/elsewhere", nil},
	} {
		if g := got(tc.dir); fmt.Sprint(g) != fmt.Sprint(tc.want) {
			t.Errorf("dbMappings(%q) = %q, want %q", tc.dir, g, tc.want)
		}
	}
}

// rssFileKiB reads the process's resident file-backed pages.
func rssFileKiB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// Writing more than one value-log file leaves the finished file's pages
// resident; ReleaseCold must give them back, and the data must still read.
func TestReleaseCold(t *testing.T) {
	db, _ := openTemp(t, Options{})
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<20/16) // 1 MiB
	const n = 100                                              // past several 16 MiB value-log files
	for i := range n {
		err := db.Update(func(txn *bdg.Txn) error {
			_, err := PutChunks(txn, fmt.Appendf(nil, "t/%03d/", i), bytes.NewReader(body))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	// Read everything back, so that every page was touched.
	check := func() {
		t.Helper()
		err := db.View(func(txn *bdg.Txn) error {
			for i := range n {
				var got bytes.Buffer
				if _, err := got.ReadFrom(ChunkReader(db, txn, fmt.Appendf(nil, "t/%03d/", i), int64(len(body)))); err != nil {
					return err
				}
				if !bytes.Equal(got.Bytes(), body) {
					return fmt.Errorf("body %d differs", i)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	check()
	before := rssFileKiB(t)
	released, err := db.ReleaseCold()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFileKiB(t)
	t.Logf("released %d mappings; RssFile %d -> %d KiB", released, before, after)
	if released == 0 {
		t.Fatal("ReleaseCold released no mapping after a full value-log file")
	}
	if before-after < 32<<10 {
		t.Errorf("RssFile fell by %d KiB, want at least 32 MiB", before-after)
	}
	check()
}
