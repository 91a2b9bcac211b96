package convert

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"glimpse/internal/writeback"
)

// RawOptions tune the raw file writer.
type RawOptions struct {
	// Sync makes Commit flush the file (and then its directory) to stable storage before
	// and after the rename, so that a crash never leaves a renamed but incomplete file.
	// qemu-img's default cache mode for convert ("unsafe") does not, and neither does
	// the default here.
	Sync bool
}

// RawFile writes a sparse raw image: zero chunks are left as holes (the file is new, so
// they read as zeros), data chunks are written where they belong, concurrently, and the
// file is cut to the exact virtual size. Nothing is preallocated.
//
// It writes to a temporary file beside the destination (".NAME.glimpse-XXXX") and renames
// it over the destination in Commit, so that a failed or interrupted conversion leaves
// nothing under the output name; Abort removes the temporary file.
type RawFile struct {
	name string // the destination
	tmp  string // the temporary file beside it
	f    *os.File
	opt  RawOptions
	size int64

	// wmu serialises data writes. ext4 and xfs take the inode lock for every buffered write,
	// so concurrent writes to one file never overlap anyway; but a writer waiting for that lock
	// in the kernel spins on its CPU while the holder copies (rwsem_spin_on_owner: a sixth of
	// the CPU time of a slow raw conversion on the benchmark VM), and a goroutine waiting
	// here leaves the CPU to the workers that read and zero-check the next chunks.
	wmu sync.Mutex

	mu       sync.Mutex
	finished bool // committed or aborted
}

var _ Writer = (*RawFile)(nil)

// CreateRaw starts a raw file at name. An existing regular file at name is replaced at
// Commit (a symbolic link is followed: the file it points to is replaced) and keeps its
// permission bits; anything else there (a directory, a device, a pipe) is refused.
func CreateRaw(name string, opt RawOptions) (*RawFile, error) {
	target := name
	perm := fs.FileMode(0o666) // before umask, like os.Create
	if st, err := os.Lstat(name); err == nil {
		if st.Mode()&fs.ModeSymlink != 0 {
			if target, err = filepath.EvalSymlinks(name); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if st, err = os.Stat(target); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s: exists and is not a regular file (write to a file, or to - for standard output)", name)
		}
		perm = st.Mode().Perm()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	dir, base := filepath.Split(target)
	for range 100 {
		var rnd [6]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		tmp := filepath.Join(dir, "."+base+".glimpse-"+hex.EncodeToString(rnd[:]))
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("creating the output beside %s: %w", name, err)
		}
		if perm != 0o666 {
			// Keep the replaced file's mode exactly (O_CREAT applied the umask).
			if err := f.Chmod(perm); err != nil {
				f.Close()
				os.Remove(tmp)
				return nil, err
			}
		}
		return &RawFile{name: target, tmp: tmp, f: f, opt: opt, size: -1}, nil
	}
	return nil, fmt.Errorf("%s: could not pick a temporary name beside it", name)
}

// Name is the destination; TempName is where the data goes until Commit.
func (w *RawFile) Name() string     { return w.name }
func (w *RawFile) TempName() string { return w.tmp }

// Begin records the virtual size. Raw files take chunks in any order, at any sector.
func (w *RawFile) Begin(size int64) (Layout, error) {
	w.size = size
	return Layout{BlockSize: 512}, nil
}

// Write writes a data chunk at its offset and skips a zero chunk.
func (w *RawFile) Write(c *Chunk) error {
	if c.Zero() {
		return nil
	}
	if c.Off < 0 || c.Off+c.Len > w.size {
		return fmt.Errorf("%s: internal error: %v outside the disk (size %d)", w.name, c, w.size)
	}
	w.wmu.Lock()
	_, err := writeback.WriteAt(w.f, c.Data, c.Off)
	w.wmu.Unlock()
	if err != nil {
		return writeError(w.name, fmt.Sprintf("writing %d bytes at offset %d", len(c.Data), c.Off), err)
	}
	return nil
}

// Commit sets the exact size (a trailing zero run becomes a hole), optionally syncs,
// and renames the file into place.
func (w *RawFile) Commit() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished {
		return fmt.Errorf("%s: already finished", w.name)
	}
	if w.size < 0 {
		return fmt.Errorf("%s: Commit before Begin", w.name)
	}
	if err := w.f.Truncate(w.size); err != nil {
		return writeError(w.name, fmt.Sprintf("setting the size to %d bytes", w.size), err)
	}
	if w.opt.Sync {
		if err := w.f.Sync(); err != nil {
			return writeError(w.name, "flushing", err)
		}
	}
	if err := w.f.Close(); err != nil {
		return writeError(w.name, "closing", err)
	}
	if err := os.Rename(w.tmp, w.name); err != nil {
		return fmt.Errorf("%s: %w", w.name, err)
	}
	w.finished = true
	if w.opt.Sync {
		if d, err := os.Open(filepath.Dir(w.name)); err == nil {
			err = d.Sync()
			d.Close()
			if err != nil {
				return writeError(w.name, "flushing its directory", err)
			}
		}
	}
	return nil
}

// Abort closes and removes the temporary file. It does nothing after a successful Commit.
func (w *RawFile) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished {
		return nil
	}
	w.finished = true
	w.f.Close() // may already be closed by a failed Commit
	if err := os.Remove(w.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// writeError names the output and says plainly when the disk is full.
func writeError(name, what string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return fmt.Errorf("%s: disk full %s: %w", name, what, err)
	case errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%s: disk quota exceeded %s: %w", name, what, err)
	}
	return fmt.Errorf("%s: %s: %w", name, what, err)
}

// RawStream writes every byte of the disk to a stream (standard output), in order,
// zeros included. A failed conversion leaves the stream short; the caller must report
// the error (glimpse exits non-zero).
type RawStream struct {
	w    io.Writer
	name string
	size int64
	pos  int64
}

var _ Writer = (*RawStream)(nil)

// NewRawStream writes to w; name is used in errors ("-" for standard output, say).
func NewRawStream(w io.Writer, name string) *RawStream {
	return &RawStream{w: w, name: name, size: -1}
}

// Begin records the size; the stream needs its chunks in order.
func (s *RawStream) Begin(size int64) (Layout, error) {
	s.size = size
	return Layout{Ordered: true, BlockSize: 512}, nil
}

// Write appends a chunk; a zero chunk is written out as zeros.
func (s *RawStream) Write(c *Chunk) error {
	if c.Off != s.pos {
		return fmt.Errorf("%s: internal error: %v arrives at stream position %d", s.name, c, s.pos)
	}
	if !c.Zero() {
		if _, err := writeback.Write(s.w, c.Data); err != nil {
			return writeError(s.name, fmt.Sprintf("writing %d bytes at offset %d", len(c.Data), c.Off), err)
		}
	} else {
		for left := c.Len; left > 0; {
			n := min(left, int64(len(zeros)))
			if _, err := writeback.Write(s.w, zeros[:n]); err != nil {
				return writeError(s.name, fmt.Sprintf("writing zeros at offset %d", c.Off+c.Len-left), err)
			}
			left -= n
		}
	}
	s.pos += c.Len
	return nil
}

// Commit checks that the whole disk went out and flushes a buffered writer.
func (s *RawStream) Commit() error {
	if s.pos != s.size {
		return fmt.Errorf("%s: internal error: stream ends at %d, the disk at %d", s.name, s.pos, s.size)
	}
	if f, ok := s.w.(interface{ Flush() error }); ok {
		if err := f.Flush(); err != nil {
			return writeError(s.name, "flushing", err)
		}
	}
	return nil
}

// Abort does nothing: what went out cannot be taken back.
func (s *RawStream) Abort() error { return nil }
