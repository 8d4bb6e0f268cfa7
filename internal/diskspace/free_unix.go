//go:build unix

package diskspace

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Free returns the bytes that an unprivileged process may still allocate on
// the filesystem holding dir (statfs f_bavail), leaving out the blocks some
// filesystems keep for root: the relay should not count on them.
func Free(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return uint64(st.Bavail) * uint64(st.Bsize), nil
}
