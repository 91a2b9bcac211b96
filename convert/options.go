package convert

import (
	"errors"
	"fmt"
	"runtime"
)

// Defaults and bounds of Options. Each default says why it is what it is.
const (
	// DefaultChunkSize is the most guest bytes a worker reads, zero-checks and hands to
	// the writer at once. At 1 MiB the fixed cost per chunk (an Extent lookup, a ReadAt,
	// a channel hand-off, a write system call) is far below 1% of moving the bytes, while
	// DefaultMaxBuffers chunks stay a small fraction of the 64 MiB memory budget.
	DefaultChunkSize = 1 << 20
	// DefaultSparseSize is qemu-img's default -S: the file-system block size of ext4, xfs
	// and most others, and so the smallest hole a sparse raw file can have.
	DefaultSparseSize = 4 << 10
	// MaxSparseSize is qemu-img's limit for -S (32768 sectors).
	MaxSparseSize = 16 << 20
	// MaxChunkSize bounds ChunkSize so that Buffers × ChunkSize stays sane.
	MaxChunkSize = 64 << 20
	// DefaultMaxBuffers caps the default number of chunk buffers, whatever the CPU
	// count: 16 × 1 MiB keeps the pipeline's own memory at 16 MiB on a 64-core machine,
	// which leaves the 64 MiB peak-RSS budget to the Go runtime and the readers' caches.
	DefaultMaxBuffers = 16
	// buffersPerWorker: two buffers per worker let one chunk be read while the previous
	// one waits for the writer (or for its turn in an ordered output).
	buffersPerWorker = 2
	// maxZeroChunk splits long zero runs, so that a stream writer that must write the
	// zeros out notices cancellation and reports progress at least every 1 GiB.
	maxZeroChunk = 1 << 30
	// extentWindow bounds each Extent call, so that the first reads start before the
	// whole map of a large disk has been walked.
	extentWindow = 64 << 20
)

// Options tune Convert. The zero value gives the defaults.
type Options struct {
	// Workers is how many goroutines read, zero-check and encode chunks at once (qemu-img's
	// -m). 0 means runtime.NumCPU().
	Workers int
	// ChunkSize is the most guest bytes read at once, a multiple of 512 up to
	// MaxChunkSize. 0 means DefaultChunkSize. It is raised to the writer's block size and
	// to a multiple of the sparse granularity when those are larger.
	ChunkSize int64
	// Buffers is the number of chunk buffers: the pipeline never holds more guest data
	// than Buffers × ChunkSize, whatever the image size. 0 means 2 × Workers, at most
	// DefaultMaxBuffers. Workers beyond Buffers would only wait, so Workers is lowered to it.
	Buffers int
	// SparseSize is qemu-img's -S: data chunks are checked for zeros in blocks of this
	// size (aligned to it), and all-zero blocks are handed to the writer as zero chunks,
	// which a sparse writer leaves as holes. A multiple of 512 up to MaxSparseSize; 0 means
	// DefaultSparseSize. The check is rounded up to the writer's block size.
	SparseSize int64
	// FullyAllocated is qemu-img's -S 0: the source is not scanned for zeros at all and
	// every byte of the disk is handed to the writer as data, zeros included, so that the
	// output is fully allocated. SparseSize must then be 0.
	FullyAllocated bool
	// Progress, when set, is told how many guest bytes are done as the conversion goes.
	Progress Progress
}

// Progress receives the number of guest bytes just finished (read and written, or
// skipped as zeros). The sum of all calls is the disk's virtual size when the conversion
// succeeds. Add may be called from several goroutines at once.
type Progress interface {
	Add(n int64)
}

// Validate reports the first invalid field. Zero fields are valid: they mean the default.
func (o Options) Validate() error {
	switch {
	case o.Workers < 0:
		return fmt.Errorf("convert: Workers %d is negative", o.Workers)
	case o.Buffers < 0:
		return fmt.Errorf("convert: Buffers %d is negative", o.Buffers)
	case o.ChunkSize < 0 || o.ChunkSize%512 != 0 || o.ChunkSize > MaxChunkSize:
		return fmt.Errorf("convert: ChunkSize %d is not a multiple of 512 between 512 and %d", o.ChunkSize, MaxChunkSize)
	case o.SparseSize < 0 || o.SparseSize%512 != 0 || o.SparseSize > MaxSparseSize:
		return fmt.Errorf("convert: SparseSize %d is not a multiple of 512 up to %d (qemu-img's -S rule)", o.SparseSize, MaxSparseSize)
	case o.FullyAllocated && o.SparseSize != 0:
		return errors.New("convert: FullyAllocated (-S 0) and a SparseSize exclude each other")
	}
	return nil
}

// withDefaults fills the zero fields.
func (o Options) withDefaults() Options {
	if o.Workers == 0 {
		o.Workers = runtime.NumCPU()
	}
	if o.Buffers == 0 {
		o.Buffers = min(buffersPerWorker*o.Workers, DefaultMaxBuffers)
	}
	o.Workers = min(o.Workers, o.Buffers)
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.SparseSize == 0 && !o.FullyAllocated {
		o.SparseSize = DefaultSparseSize
	}
	if o.Progress == nil {
		o.Progress = noProgress{}
	}
	return o
}

type noProgress struct{}

func (noProgress) Add(int64) {}
