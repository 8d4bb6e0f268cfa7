package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/dgraph-io/badger/v4"
)

// Large values (message bodies) are stored as numbered chunks of BodyChunk
// bytes under a key prefix: prefix + chunk number (u32, big-endian).

func chunkKey(prefix []byte, n uint32) []byte {
	k := make([]byte, 0, len(prefix)+4)
	return binary.BigEndian.AppendUint32(append(k, prefix...), n)
}

// NumChunks is how many chunks a value of size bytes takes.
func NumChunks(size int64) uint32 { return uint32((size + BodyChunk - 1) / BodyChunk) }

// PutChunks writes everything r yields under prefix inside txn and returns the
// byte count. Chunks of BodyChunk bytes are above ValueThreshold, so each
// costs the transaction only a value-log pointer.
func PutChunks(txn *badger.Txn, prefix []byte, r io.Reader) (int64, error) {
	var size int64
	for n := uint32(0); ; n++ {
		// A buffer per chunk, grown to what arrives: a 4 KiB message
		// costs 4 KiB, not a whole chunk. Badger keeps it until commit.
		var b bytes.Buffer
		got, err := io.CopyN(&b, r, BodyChunk)
		if got > 0 {
			if err := txn.Set(chunkKey(prefix, n), b.Bytes()); err != nil {
				return size, fmt.Errorf("store chunk %d: %w", n, err)
			}
			size += got
		}
		if err == io.EOF || err == nil && got < BodyChunk {
			return size, nil
		}
		if err != nil {
			return size, err
		}
	}
}

// DeleteChunks deletes the chunks of a size-byte value under prefix.
func DeleteChunks(txn *badger.Txn, prefix []byte, size int64) error {
	for n := range NumChunks(size) {
		if err := txn.Delete(chunkKey(prefix, n)); err != nil {
			return err
		}
	}
	return nil
}

// ChunkReader reads a size-byte chunked value one chunk at a time: inside
// txn when it is not nil, else each chunk in its own read transaction of db,
// so that a large body is never held in memory whole.
func ChunkReader(db *DB, txn *badger.Txn, prefix []byte, size int64) io.Reader {
	return &chunkReader{db: db, txn: txn, prefix: bytes.Clone(prefix), chunks: NumChunks(size)}
}

type chunkReader struct {
	db     *DB
	txn    *badger.Txn
	prefix []byte
	next   uint32
	chunks uint32
	cur    []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.next >= r.chunks {
			return 0, io.EOF
		}
		if err := r.load(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

func (r *chunkReader) load() error {
	get := func(txn *badger.Txn) error {
		item, err := txn.Get(chunkKey(r.prefix, r.next))
		if err != nil {
			return fmt.Errorf("read chunk %d of %q: %w", r.next, r.prefix, err)
		}
		r.cur, err = item.ValueCopy(nil)
		return err
	}
	var err error
	if r.txn != nil {
		err = get(r.txn)
	} else {
		err = r.db.View(get)
	}
	if err != nil {
		return err
	}
	r.next++
	return nil
}
