package inspect

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
)

// Probe windows: Probe reads at most probeHead bytes from the start and probeTail bytes from
// the end of a file. 64 KiB covers every magic glimpse knows: the ISO 9660 volume descriptors
// at 32 KiB, the VHDX headers at 64 KiB are not needed for the file identifier at 0, and the
// footers of fixed vhd (512 B) and streamOptimized vmdk (1536 B) are at the very end.
const (
	probeHead = 64 << 10
	probeTail = 64 << 10
)

// formatSpec is one row of the format table.
type formatSpec struct {
	format Format
	// probe decides from magic numbers and checksums only, cheaply, whether the bytes
	// look like this format. It never reads beyond what probeData holds.
	probe func(p *probeData) bool
	// open parses the metadata (never the guest data) and returns the format's core. It
	// returns an error wrapping ErrWrongFormat when the bytes are not this format at all.
	open func(o *opener) (core, error)
}

// formatTable is every format glimpse knows, in the order Probe tries them. Raw is last:
// it matches anything. This table is the one place where formats are wired in.
var formatTable []formatSpec

func init() {
	// Assigned in init to break the initialisation cycle between the table and the
	// format parsers that open nested images through it (ova, backing files).
	formatTable = []formatSpec{
		{QCOW2, probeQCOW2, openQCOW2},
		{QED, probeQED, openQED},
		{VMDK, probeVMDK, openVMDK},
		{VHDX, probeVHDX, openVHDX},
		{VHD, probeVHD, openVHD},
		{VDI, probeVDI, openVDI},
		{LUKS, probeLUKS, openLUKS},
		{OVA, probeOVA, openOVA},
		{OVF, probeOVF, openOVF},
		{ISO, probeISO, openISO},
		{Raw, func(*probeData) bool { return false }, openRaw},
	}
}

func specFor(f Format) (formatSpec, bool) {
	for _, s := range formatTable {
		if s.format == f {
			return s, true
		}
	}
	return formatSpec{}, false
}

// probeData is what a probe function may look at.
type probeData struct {
	head []byte // the first min(size, probeHead) bytes
	tail []byte // the last min(size, probeTail) bytes
	size int64  // the file size; unknownSize while a stream is still arriving
}

// at returns n bytes at off from head or tail, or nil when neither window holds them.
func (p *probeData) at(off, n int64) []byte {
	if off >= 0 && off+n <= int64(len(p.head)) {
		return p.head[off : off+n]
	}
	if p.size != unknownSize {
		tailStart := p.size - int64(len(p.tail))
		if off >= tailStart && off+n <= p.size {
			return p.tail[off-tailStart : off-tailStart+n]
		}
	}
	return nil
}

// unknownSize is the size a stream reports before its end has been seen.
const unknownSize = int64(1) << 62

func readProbe(r io.ReaderAt, size int64) (*probeData, error) {
	p := &probeData{size: size}
	h := min(size, probeHead)
	buf := make([]byte, h)
	if n, err := r.ReadAt(buf, 0); n < len(buf) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading the first %d bytes: %w", h, err)
	}
	p.head = buf
	if size == unknownSize {
		return p, nil
	}
	t := min(size, probeTail)
	if t <= h && size <= probeHead {
		p.tail = buf[size-t:]
		return p, nil
	}
	tb := make([]byte, t)
	if n, err := r.ReadAt(tb, size-t); n < len(tb) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading the last %d bytes: %w", t, err)
	}
	p.tail = tb
	return p, nil
}

func probeAll(p *probeData) []Format {
	var out []Format
	for _, s := range formatTable {
		if s.probe(p) {
			out = append(out, s.format)
		}
	}
	return out
}

// Probe says which format the bytes are, from a bounded head and tail only (at most 128 KiB
// read, whatever the size). It returns Raw when no other format matches. When several match
// (a polyglot), it returns the first in table order; Open reports the polyglot as a finding.
func Probe(r io.ReaderAt, size int64) (Format, error) {
	all, err := ProbeAll(r, size)
	if err != nil {
		return "", err
	}
	if len(all) == 0 {
		return Raw, nil
	}
	return all[0], nil
}

// ProbeAll returns every format whose magic matches, in table order; nil means raw.
func ProbeAll(r io.ReaderAt, size int64) ([]Format, error) {
	if size < 0 {
		return nil, fmt.Errorf("negative size %d", size)
	}
	p, err := readProbe(r, size)
	if err != nil {
		return nil, err
	}
	return probeAll(p), nil
}

// OpenOptions control Open. The zero value opens any format found by probing, follows no
// other file, and sets no size limit.
type OpenOptions struct {
	// Name is used in errors and Info.Filename.
	Name string
	// Format, when set, is the format the caller declares. Open parses the file as that
	// format and reports a FindFormatMismatch finding when the content probes as another.
	Format Format
	// AllowBacking lets reads follow backing files, external data files, flat extents and
	// differencing parents. They must name files inside Dir (no absolute paths, no "..",
	// no symlinks leading out), the chain is at most MaxChainDepth deep and may not loop.
	// Without it such images open, describe themselves and report findings, but reads that
	// need the other file fail with ErrNotAllowed.
	AllowBacking bool
	// Dir is the directory other files are resolved in; OpenFile sets it to the image's own.
	Dir string
	// MaxChainDepth bounds backing chains; 0 means DefaultMaxChainDepth.
	MaxChainDepth int
	// MaxVirtualSize, when above zero, makes a larger virtual size a FindVirtualSize finding.
	MaxVirtualSize int64
	// Disk picks the disk of a container (an OVA) that ReadAt and Extent read: its member
	// name in the archive or its 0-based index among the OVF's disks. Empty means the first.
	Disk string
	// Logger receives warnings about oddities that are not errors; nil discards them.
	Logger *slog.Logger

	depth int      // position in a backing chain (0 = the image asked for)
	chain []string // files already in the chain, for cycle detection
}

// DefaultMaxChainDepth is the longest backing chain glimpse follows. qemu has no limit; 16
// is far beyond any chain seen in practice and keeps a hostile chain from exhausting
// file descriptors.
const DefaultMaxChainDepth = 16

// opener carries what a format's open function needs.
type opener struct {
	r         io.ReaderAt
	size      int64 // file size, or unknownSize while streaming
	sizeKnown bool  // false while a stream is still arriving: skip past-EOF decisions and tails
	name      string
	opt       OpenOptions
	probe     *probeData
	// digest hashes n bytes at off; the stream inspector supplies one that hashes as the
	// bytes pass. algo is "sha1", "sha256" or "sha512".
	digest func(off, n int64, algo string) ([]byte, error)
	// streaming is set by the stream inspector: digests are cheap to ask for before the
	// bytes pass and impossible after.
	streaming bool
	closers   []io.Closer
	log       *slog.Logger
}

// ferr is a FormatError for this opener's file.
func (o *opener) ferr(f Format, structure, field string, off int64, val any, msg string, args ...any) *FormatError {
	e := ferr(f, structure, field, off, val, msg, args...)
	e.File = o.name
	return e
}

// pastEOF reports whether [off, off+n) ends beyond the end of the file. While streaming the
// size is not known yet and the answer is always false.
func (o *opener) pastEOF(off, n int64) bool {
	if !o.sizeKnown {
		return false
	}
	return !within(off, n, o.size)
}

// Open parses the image in r (size bytes) and returns it. It reads metadata only: guest
// data is read when ReadAt asks for it.
func Open(r io.ReaderAt, size int64, opt OpenOptions) (Image, error) {
	d, err := openDisk(r, size, opt, nil)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// OpenFile opens the named file. Other files it needs (only with AllowBacking) are looked up
// in its directory. Close closes the file.
func OpenFile(name string, opt OpenOptions) (Image, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("%s: is a directory", name)
	}
	adviseSequential(f)
	if opt.Name == "" {
		opt.Name = name
	}
	if opt.Dir == "" {
		opt.Dir = filepath.Dir(name)
	}
	if len(opt.chain) == 0 {
		if abs, err := filepath.Abs(name); err == nil {
			opt.chain = []string{abs}
		}
	}
	d, err := openDisk(f, st.Size(), opt, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func openDisk(r io.ReaderAt, size int64, opt OpenOptions, closer io.Closer) (*disk, error) {
	if size < 0 {
		return nil, fmt.Errorf("%s: negative size %d", opt.Name, size)
	}
	p, err := readProbe(r, size)
	if err != nil {
		return nil, nameErrors(err, opt.Name)
	}
	o := &opener{r: r, size: size, sizeKnown: true, name: opt.Name, opt: opt, probe: p, log: opt.Logger}
	o.digest = func(off, n int64, algo string) ([]byte, error) { return digestAt(r, off, n, algo) }
	return openWith(o, closer)
}

// openWith picks the format (declared or probed), runs its parser and wraps the core.
func openWith(o *opener, closer io.Closer) (*disk, error) {
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	matches := probeAll(o.probe)
	format := o.opt.Format
	if format == "" {
		format = Raw
		if len(matches) > 0 {
			format = matches[0]
		}
	}
	spec, ok := specFor(format)
	if !ok {
		return nil, fmt.Errorf("%s: unknown format %q", o.name, format)
	}
	c, err := spec.open(o)
	if err != nil {
		for _, cl := range o.closers {
			cl.Close()
		}
		if errors.Is(err, ErrWrongFormat) {
			what := "raw data"
			if len(matches) > 0 {
				what = string(matches[0])
			}
			return nil, fmt.Errorf("%s: not a %s image (content looks like %s): %w", o.name, format, what, ErrWrongFormat)
		}
		return nil, nameErrors(err, o.name)
	}
	d := &disk{format: format, name: o.name, c: c, closers: o.closers}
	if closer != nil {
		d.closers = append(d.closers, closer)
	}
	d.info = Info{Filename: o.name, Format: format, VirtualSize: c.size()}
	c.describe(&d.info)
	d.findings = append(d.findings, c.findings()...)
	if len(matches) > 1 {
		d.findings = append(d.findings, Finding{FindPolyglot,
			fmt.Sprintf("the file matches more than one format at once (%s): a reader that probes may see something other than what was declared", joinFormats(matches))})
	}
	if o.opt.Format != "" && len(matches) > 0 && !slices.Contains(matches, format) {
		d.findings = append(d.findings, Finding{FindFormatMismatch,
			fmt.Sprintf("declared %s, but the content is %s", format, matches[0])})
	}
	if lim := o.opt.MaxVirtualSize; lim > 0 && d.info.VirtualSize > lim {
		d.findings = append(d.findings, Finding{FindVirtualSize,
			fmt.Sprintf("virtual size %d bytes is above the limit of %d bytes", d.info.VirtualSize, lim)})
	}
	return d, nil
}

func joinFormats(fs []Format) string {
	s := ""
	for i, f := range fs {
		if i > 0 {
			s += ", "
		}
		s += string(f)
	}
	return s
}

// digestAt hashes n bytes of r at off.
func digestAt(r io.ReaderAt, off, n int64, algo string) ([]byte, error) {
	h, err := newHash(algo)
	if err != nil {
		return nil, err
	}
	sr := io.NewSectionReader(r, off, n)
	buf := make([]byte, 1<<20)
	got, err := io.CopyBuffer(h, sr, buf)
	if err != nil {
		return nil, err
	}
	if got != n {
		return nil, io.ErrUnexpectedEOF
	}
	return h.Sum(nil), nil
}

func newHash(algo string) (hash.Hash, error) {
	switch algo {
	case "sha1":
		return sha1.New(), nil
	case "sha256":
		return sha256.New(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("unknown digest algorithm %q", algo)
}

// openRelated opens a file that this image refers to: a backing file, an external data
// file, a flat extent, a differencing parent. It is allowed only with AllowBacking, only for
// names inside Dir (after following symlinks), at most MaxChainDepth deep, and never for a
// file already in the chain. what names the reference in errors ("backing file").
func (o *opener) openRelated(ref, what string) (*os.File, int64, error) {
	if !o.opt.AllowBacking {
		return nil, 0, fmt.Errorf("%s %q: following it needs --allow-backing: %w", what, ref, ErrNotAllowed)
	}
	if o.opt.Dir == "" {
		return nil, 0, fmt.Errorf("%s %q: no directory to resolve it in: %w", what, ref, ErrNotAllowed)
	}
	if !filepath.IsLocal(ref) {
		return nil, 0, fmt.Errorf("%s %q: not a name inside the image's directory: %w", what, ref, ErrNotAllowed)
	}
	depthLimit := o.opt.MaxChainDepth
	if depthLimit <= 0 {
		depthLimit = DefaultMaxChainDepth
	}
	if o.opt.depth+1 > depthLimit {
		return nil, 0, fmt.Errorf("%s %q: chain deeper than %d: %w", what, ref, depthLimit, ErrNotAllowed)
	}
	dir, err := filepath.EvalSymlinks(o.opt.Dir)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %q: %w", what, ref, err)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, 0, err
	}
	full, err := filepath.EvalSymlinks(filepath.Join(dir, ref))
	if err != nil {
		return nil, 0, fmt.Errorf("%s %q: %w", what, ref, err)
	}
	if rel, err := filepath.Rel(dir, full); err != nil || !filepath.IsLocal(rel) {
		return nil, 0, fmt.Errorf("%s %q: resolves outside the image's directory: %w", what, ref, ErrNotAllowed)
	}
	if slices.Contains(o.opt.chain, full) {
		return nil, 0, fmt.Errorf("%s %q: the chain loops back to %s: %w", what, ref, full, ErrNotAllowed)
	}
	f, err := os.Open(full)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %q: %w", what, ref, err)
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = errors.New("not a regular file")
		}
		return nil, 0, fmt.Errorf("%s %q: %w", what, ref, err)
	}
	o.closers = append(o.closers, f)
	return f, st.Size(), nil
}

// openRelatedImage opens a backing file or parent as an image of its own (probed, or of the
// declared format), one level deeper in the chain. Its findings do not become this image's.
func (o *opener) openRelatedImage(ref string, declared Format, what string) (*disk, error) {
	f, size, err := o.openRelated(ref, what)
	if err != nil {
		return nil, err
	}
	opt := o.opt
	opt.Name = filepath.Join(o.opt.Dir, ref)
	opt.Format = declared
	opt.depth++
	full, _ := filepath.Abs(f.Name())
	opt.chain = append(slices.Clone(o.opt.chain), full)
	opt.Dir = filepath.Dir(f.Name())
	d, err := openDisk(f, size, opt, nil)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", what, ref, err)
	}
	o.closers = append(o.closers, d)
	return d, nil
}
