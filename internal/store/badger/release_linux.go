package badger

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mapping is one line of /proc/self/maps that maps a database file.
type mapping struct {
	start, end uintptr
	path       string
}

// releaseCold asks the kernel to reclaim the pages of the database's mapped
// files that are not being written: the value-log files other than the
// newest and the tables. Badger reads both through mmap, so every body ever
// written or read stays in the process's resident set until the kernel
// needs the memory; a queue of 100,000 deferred 4 KiB messages kept about
// 500 MiB of file pages resident. MADV_PAGEOUT never loses data (clean pages
// are dropped, dirty ones are left alone) and is harmless on a range that
// Badger unmapped and something else mapped in between, which is why it is
// used rather than MADV_DONTNEED. A page that is needed again is read back
// from the page cache or the disk, as Postfix reads its queue files.
func (db *DB) releaseCold() (int, error) {
	dir, err := filepath.Abs(db.Opts().Dir)
	if err != nil {
		return 0, fmt.Errorf("release cold pages: %w", err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("release cold pages: %w", err)
	}
	ms := dbMappings(maps, dir)
	newest := ""
	for _, m := range ms {
		if strings.HasSuffix(m.path, ".vlog") && m.path > newest {
			newest = m.path
		}
	}
	n := 0
	for _, m := range ms {
		if m.path == newest || !(strings.HasSuffix(m.path, ".vlog") || strings.HasSuffix(m.path, ".sst")) {
			continue
		}
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_PAGEOUT)
		if errno == unix.EINVAL || errno == unix.ENOSYS {
			// Kernels before 5.4 lack MADV_PAGEOUT; nothing to do there.
			return n, nil
		}
		// ENOMEM means the range was unmapped meanwhile: fine.
		if errno == 0 {
			n++
		}
	}
	return n, nil
}

// dbMappings picks the mappings of files directly in dir out of the text of
// /proc/self/maps.
func dbMappings(maps []byte, dir string) []mapping {
	var out []mapping
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// start-end perms offset dev inode path; the path may hold spaces.
		line := sc.Text()
		i := strings.Index(line, " /")
		if i < 0 || filepath.Dir(line[i+1:]) != dir {
			continue
		}
		path := line[i+1:]
		addr, _, _ := strings.Cut(line, " ")
		lo, hi, ok := strings.Cut(addr, "-")
		if !ok {
			continue
		}
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || e <= s {
			continue
		}
		out = append(out, mapping{start: uintptr(s), end: uintptr(e), path: path})
	}
	return out
}
