package convert

import "fmt"

// Writer receives a virtual disk from Convert and turns it into an output (a file, a
// stream). See the package documentation for the full contract; in short, Convert calls
//
//	Begin(size) once, then Write for chunks that together cover [0, size) exactly once,
//	then Commit, or Abort when anything failed (including Begin or Commit).
type Writer interface {
	// Begin is called first, once, with the virtual size of the disk. It returns how the
	// writer wants its chunks.
	Begin(size int64) (Layout, error)
	// Write stores one chunk. The chunk's Data belongs to the pipeline and is reused as
	// soon as Write returns: a writer that needs the bytes later copies them. Unless the
	// Layout is Ordered, Write is called from several goroutines at once, in any order.
	Write(c *Chunk) error
	// Commit finishes the output (metadata, footer, size, rename) after the last Write.
	Commit() error
	// Abort discards the output: nothing may be left under the output name. It is called
	// instead of Commit when the conversion fails or is cancelled, and after a failed
	// Begin or Commit. It may be called more than once.
	Abort() error
}

// Encoder is implemented by writers with expensive per-chunk work that does not depend
// on other chunks (compression, checksums). The pipeline's workers call Encode on every
// data chunk, concurrently and out of order, before the chunk reaches Write; Encode
// leaves its result in Chunk.Encoded. This keeps Ordered writers (streams) as parallel as
// positional ones: only the cheap append is serialised.
type Encoder interface {
	Encode(c *Chunk) error
}

// Layout says how a writer wants its chunks.
type Layout struct {
	// Ordered writers get their Write calls one at a time, in guest order, with no gaps
	// (zero runs come as zero chunks in their place). Writers to a stream need this, and
	// so do writers that allocate space as chunks arrive and want the same input to give
	// the same bytes. Otherwise Write is called concurrently and in any order.
	Ordered bool
	// BlockSize is the writer's unit: every chunk starts at a multiple of it, and every
	// chunk but the disk's last ends at one, so a chunk never covers part of a block (a
	// qcow2 cluster, a vhd block) that another chunk also covers. Zero chunks are whole
	// blocks. A power of two up to MaxBlockSize; 0 means 512 (a sector).
	BlockSize int64
}

// MaxBlockSize bounds Layout.BlockSize: the largest unit any output format allocates in
// (vhdx blocks go up to 256 MiB, but they are written in pieces; a chunk of a whole
// block must still fit in the pipeline's memory budget).
const MaxBlockSize = 32 << 20

// Chunk is a run of the virtual disk handed to a Writer.
type Chunk struct {
	// Off is the guest offset of the first byte.
	Off int64
	// Len is the number of guest bytes. A data chunk is at most the pipeline's chunk
	// size; a zero chunk may be far longer (up to 1 GiB).
	Len int64
	// Data holds the Len guest bytes, or is nil when every byte of the chunk is zero (a
	// zero chunk: nothing was read, and a sparse writer writes nothing). Writers must not
	// modify Data or keep it after Write returns.
	Data []byte
	// Encoded is whatever the writer's Encode left for its Write; nil without an Encoder.
	Encoded any
}

// Zero reports whether the chunk reads as zeros and carries no data.
func (c *Chunk) Zero() bool { return c.Data == nil }

func (c *Chunk) String() string {
	kind := "data"
	if c.Zero() {
		kind = "zero"
	}
	return fmt.Sprintf("%s chunk [%d, %d)", kind, c.Off, c.Off+c.Len)
}

func (l Layout) validate() (Layout, error) {
	if l.BlockSize == 0 {
		l.BlockSize = 512
	}
	if l.BlockSize < 0 || l.BlockSize > MaxBlockSize || l.BlockSize&(l.BlockSize-1) != 0 {
		return l, fmt.Errorf("convert: writer block size %d is not a power of two up to %d", l.BlockSize, MaxBlockSize)
	}
	return l, nil
}
