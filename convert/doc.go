// Package convert copies the virtual disk of an inspect.Image into an output format, and
// compares and maps images the way qemu-img does.
//
// # The pipeline
//
// Convert(ctx, src, dst, opt) runs three kinds of goroutines under one errgroup (the first
// error cancels the others, and so does ctx):
//
//   - one producer walks src.Extent from 0 to the virtual size. Zero and unallocated
//     extents cost nothing: no read, no buffer, only a zero chunk handed on. Data extents
//     (plain or compressed) are widened to whole writer blocks and cut at chunk windows
//     (multiples of the chunk size in the guest), so runs that share a window share one
//     read. For each such data chunk the producer takes a buffer from a fixed pool of
//     Options.Buffers buffers, waiting when all are in use: the pipeline never holds more
//     than Buffers × ChunkSize bytes of guest data, whatever the image size (16 MiB by
//     default).
//   - Options.Workers workers read each chunk with src.ReadAt, split it into runs of
//     all-zero and not-all-zero blocks of the sparse size (bytes.Equal against a zero
//     array, which is vectorised), and run the writer's Encode, if it has one, on the data
//     runs.
//   - For a positional writer the worker then calls Write itself, concurrently with the
//     other workers. For an Ordered writer a sequencer receives every job in guest order
//     (through a FIFO that the producer fills as it emits) and, as each job's worker
//     finishes, writes its chunks, so the stream is in order while reading, zero checks
//     and encoding still run in parallel.
//
// With Options.FullyAllocated (qemu-img's -S 0) nothing is scanned: every chunk of the
// disk is read (ReadAt of a zero extent does no I/O) and handed on as data.
//
// # The Writer contract
//
// A Writer is driven by exactly one Convert:
//
//  1. Begin(size) is called once, first, with the virtual size, and returns the Layout:
//     whether chunks must come in order, and the writer's block size.
//  2. Write(c) is called with chunks that together cover [0, size) exactly once. A chunk
//     is data (Data holds Len bytes) or zero (Data nil: every byte reads as zero and
//     nothing was read). Chunks start at multiples of the block size, and all but the
//     disk's last end at one, so no block is shared by two chunks; data chunks are at
//     most the chunk size long (itself a multiple of the block size), zero chunks up to
//     1 GiB. Data is the pipeline's buffer: a writer copies what it keeps.
//  3. With Layout.Ordered, Write calls come one at a time, in guest order, without gaps.
//     Otherwise they come concurrently from the workers, in any order, and the writer
//     serialises what it must (allocating clusters, updating tables) itself.
//  4. If the writer implements Encoder, Encode(c) runs on every data chunk in a worker,
//     concurrently and in any order, before that chunk's Write. It leaves its result in
//     c.Encoded (compressed grains, a checksum), and Write consumes it.
//  5. Commit is called once after the last Write of a successful conversion; it writes
//     what can only be written at the end (tables, footers, the size) and puts the output
//     in place. When anything fails — Begin, a read, a Write, Commit itself — or ctx is
//     cancelled, Abort is called instead (also after a failed Begin or Commit), and must
//     leave nothing under the output name.
//
// How the next writers fit:
//
//   - raw file (RawFile): positional, block 512; zero chunks are holes; Commit truncates
//     to the size and renames the temporary file into place.
//   - standard output (RawStream): Ordered; zero chunks are written out as zeros.
//   - qcow2, vhd, vdi: positional or Ordered (Ordered gives the same bytes for the same
//     input, which CI wants), block = the cluster or block size, so every Write covers
//     whole clusters; zero chunks leave clusters unallocated; tables and refcounts are
//     written in Commit.
//   - qcow2 -c: Encoder compresses each cluster of a chunk in the workers (deflate or
//     zstd); Write, Ordered, appends the compressed clusters and records their
//     descriptors.
//   - vmdk streamOptimized: Ordered and an Encoder (deflate per grain in the workers);
//     Write appends grain markers, and grain tables as each table's range is passed;
//     Commit writes the grain directory, the footer and the end-of-stream marker. It
//     needs no seeking, so it can write to a pipe.
//   - vmdk monolithicSparse, vhdx: positional, block = grain or a 1 MiB piece of a
//     payload block.
//
// The sparse size (-S) is the granularity of the zero check, rounded up to the writer's
// block size: a qcow2 writer with 64 KiB clusters sees zeros only as whole zero clusters.
//
// # Compare and Map
//
// Compare walks the allocation maps of two images together, reads nothing where both are
// zero, reads one side only where the other is zero, and reports the first differing
// 512-byte sector as qemu-img compare does, including its rules for images of different
// sizes. Map reports the allocation map merged as qemu-img map merges it.
package convert
