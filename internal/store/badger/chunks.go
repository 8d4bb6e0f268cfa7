package badger

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	bdg "github.com/dgraph-io/badger/v4"
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
func PutChunks(txn *bdg.Txn, prefix []byte, r io.Reader) (int64, error) {
	// Each chunk is read into a pooled scratch buffer and stored as an
	// exact-size copy (Badger keeps the value until the commit): one
	// allocation of the message's size, where a growing buffer made five
	// for a 4 KiB message. Most mail fits the small buffer; only a body
	// that fills it takes a BodyChunk one, so that 20 sessions of 4 KiB
	// messages do not hold 20 MiB of scratch.
	sp := smallScratch.Get().(*[]byte)
	defer smallScratch.Put(sp)
	buf := *sp
	got, err := fill(r, buf)
	if err == nil {
		bp := scratch.Get().(*[]byte)
		defer scratch.Put(bp)
		big := *bp
		copy(big, buf[:got])
		var more int
		more, err = fill(r, big[got:])
		buf, got = big, got+more
	}
	var size int64
	for n := uint32(0); ; n++ {
		if err != nil && err != io.EOF {
			return size, err
		}
		if got > 0 {
			if err := txn.Set(chunkKey(prefix, n), bytes.Clone(buf[:got])); err != nil {
				return size, fmt.Errorf("store chunk %d: %w", n, err)
			}
			size += int64(got)
		}
		if err == io.EOF {
			return size, nil
		}
		got, err = fill(r, buf)
	}
}

// fill reads into buf until it is full (nil error), r ends (io.EOF, with
// what came before it) or fails. Unlike io.ReadFull it passes the reader's
// own io.ErrUnexpectedEOF on as a failure: a client cut off mid-message must
// not look like a message that ended.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// scratch holds BodyChunk-sized read buffers for PutChunks, smallScratch
// the first read of each body.
var (
	scratch = sync.Pool{New: func() any {
		b := make([]byte, BodyChunk)
		return &b
	}}
	smallScratch = sync.Pool{New: func() any {
		b := make([]byte, smallChunk)
		return &b
	}}
)

// smallChunk is the size of PutChunks' first read.
const smallChunk = 64 << 10

// DeleteChunks deletes the chunks of a size-byte value under prefix.
func DeleteChunks(txn *bdg.Txn, prefix []byte, size int64) error {
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
func ChunkReader(db *DB, txn *bdg.Txn, prefix []byte, size int64) io.Reader {
	return &chunkReader{db: db, txn: txn, prefix: bytes.Clone(prefix), chunks: NumChunks(size)}
}

type chunkReader struct {
	db     *DB
	txn    *bdg.Txn
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
	get := func(txn *bdg.Txn) error {
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
