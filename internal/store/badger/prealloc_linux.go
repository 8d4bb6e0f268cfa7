package badger

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// preallocateDir backs the sparse mapped files directly in dir. A file that
// goes away meanwhile (a table compacted away, a flushed memtable's log) is
// skipped.
func preallocateDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("preallocate: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !e.Type().IsRegular() || !mapped(e.Name()) {
			continue
		}
		if err := preallocate(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
			if errors.Is(err, ErrNoPrealloc) {
				break // the same for every file
			}
		}
	}
	return errors.Join(errs...)
}

// mapped reports whether Badger maps the file name: the memtable logs
// (.mem), the value log (.vlog), the tables (.sst) and the discard stats.
func mapped(name string) bool {
	switch filepath.Ext(name) {
	case ".mem", ".vlog", ".sst":
		return true
	}
	return name == "DISCARD"
}

// preallocate allocates the blocks that the file at path lacks below its
// size. A stat comes first so that the files already backed, nearly all of
// them, cost no open.
//
// FALLOC_FL_KEEP_SIZE: over the file's own length it allocates exactly as
// mode 0 would, but if Badger shrinks the file between the fstat and the
// fallocate (a finished value-log file is truncated to its end), it leaves
// the size alone rather than growing the file back with zeros behind
// Badger's back; the blocks past the end are freed with the file.
func preallocate(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("preallocate %s: %w", path, err)
	}
	if !sparse(&st) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("preallocate: %w", err)
	}
	defer f.Close()
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("preallocate %s: %w", path, err)
	}
	if !sparse(&st) {
		return nil
	}
	for {
		err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, st.Size)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("preallocate %s (%d bytes): %w", path, st.Size, ErrNoSpace)
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("preallocate %s: %w", path, ErrNoPrealloc)
	}
	return fmt.Errorf("preallocate %s: %w", path, err)
}

// sparse reports whether a file has fewer blocks than its size needs.
// st_blocks counts 512-byte units whatever the filesystem's block size.
func sparse(st *unix.Stat_t) bool {
	return st.Size > 0 && st.Blocks*512 < st.Size
}
