package convert

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"glimpse/inspect"
)

// The vmdk writers make the two VMware subformats that keep the whole disk in one file (the
// only ones an image service should accept, see inspect's vmdk.go): a hosted sparse extent
// with its descriptor embedded, as VMware's Virtual Disk Format 1.1 describes it and as
// qemu-img writes it.
//
//   - monolithicSparse (the default): a version 1 header, the descriptor in sectors 1-20,
//     a redundant grain directory and its grain tables, the grain directory and its grain
//     tables, then the grains (64 KiB each) in guest order. Every grain table is
//     preallocated, as qemu does (the regions are holes until a table has entries), so that
//     the layout is qemu's own: for the same data, CID and extent name the bytes are
//     qemu-img convert's (qemu prints the CID without leading zeros). Zero grains stay
//     unallocated.
//   - streamOptimized: a version 3 header with the compressed-grain and marker flags and
//     gdOffset GD_AT_END, the descriptor, then for each data grain a grain marker (LBA,
//     size) and one zlib stream of the whole grain (the last one padded with zeros, as
//     VMware and VirtualBox expect a full grain), each grain table behind its marker once
//     the guest has passed its range (tables with no grain are not written; their
//     directory entry is 0), the grain directory behind its marker, a footer marker and
//     the footer (the header again with the real gdOffset), and the end-of-stream marker.
//     It is written in one pass with no seeking, so it can go to a pipe (name "-").
//     qemu 7.2 writes streamOptimized otherwise (preallocated tables, the directory in the
//     header, a redundant directory, no footer and no end-of-stream marker, which ESXi
//     refuses; a partial last grain, which VirtualBox refuses); qemu reads both.
//
// A disk of 0 bytes is refused: a header with capacity 0 means a descriptor file to
// readers (qemu-img writes one and then cannot open it).
//
// Both writers are Ordered: grains are allocated in guest order, so the same input and
// options give the same bytes. The streamOptimized writer is also an Encoder: the pipeline's
// workers compress the grains, and Write only appends them. The monolithicSparse writer
// does no work per grain beyond one write per chunk.
//
// Options (-o), qemu's keys and spellings:
//
//	subformat=monolithicSparse|streamOptimized
//	adapter_type=ide|buslogic|lsilogic|legacyESX   ddb.adapterType (default ide); the
//	                 geometry has 16 heads for ide and 255 otherwise, 63 sectors, and
//	                 cylinders = sectors / (63 × heads), as qemu computes it
//	hwversion=N      ddb.virtualHWVersion, 4 to 21 (default 4, as qemu)
//	compat6=on       hwversion 6 (qemu's older spelling; not with hwversion)
//	toolsversion=N   ddb.toolsVersion (default 2147483647, as qemu)
//	zeroed_grain=on  monolithicSparse only: a version 2 header with the zeroed-grain flag
//	                 (VMware's Virtual Disk Format 5.0), and in every grain table that holds
//	                 data the zero grains are marked zeroed (GTE 1) rather than left
//	                 unallocated. VirtualBox reads only versions 1 and 3.
//
// and glimpse's own:
//
//	cid=HEX          the descriptor's CID, 1 to 8 hex digits (default: random, as VMware
//	                 and qemu do; set it for reproducible output)
//	uuid=UUID        adds ddb.uuid in VMware's spelling ("60 00 c2 …-… 4c"); none by default
//	extent_name=NAME the file name in the extent line (default: the output's base name,
//	                 "disk.vmdk" on standard output): printable ASCII without / \ : or ",
//	                 so that every reader takes it for this file itself
//	grain_size=SIZE  the grain size, a power of two from 4 KiB to 1 MiB (default 64 KiB,
//	                 the only size VMware itself writes)
//
// -c is accepted with streamOptimized (its grains are always compressed) and refused with
// monolithicSparse, whose grains cannot be compressed (qemu-img ignores it there).
// backing_file is refused: glimpse writes no delta disks.

// Layout constants of a hosted sparse extent.
const (
	vmdkSectorSize   = 512
	vmdkGTEsPerGT    = 512 // the spec fixes it; qemu refuses more
	vmdkGTSectors    = vmdkGTEsPerGT * 4 / vmdkSectorSize
	vmdkDescOffset   = 1  // sectors
	vmdkDescSectors  = 20 // as qemu: room for VMware to add ddb keys in place
	vmdkDefaultGrain = 64 << 10
	vmdkMinGrain     = 4 << 10 // 8 sectors: VirtualBox's minimum
	vmdkMaxGrain     = 1 << 20
	// vmdkMaxSize bounds the virtual size. Grain offsets are 32-bit sector numbers, so a
	// file holds at most 2 TiB of grains; 64 TiB of capacity keeps the grain directory in
	// memory at 8 MiB with 64 KiB grains (a stream writer holds it until the end) and the
	// preallocated grain tables of monolithicSparse at 4 GiB of holes per copy.
	vmdkMaxSize = 64 << 40
	// vmdkMaxGDBytes bounds the grain directory (the stream writer keeps it in memory
	// until the end): 8 MiB is 64 TiB of 64 KiB grains, 4 TiB of 4 KiB ones.
	vmdkMaxGDBytes = 8 << 20
	// vmdkMaxSector is the largest sector a grain table or directory entry can name.
	vmdkMaxSector = math.MaxUint32

	vmdkFlagNewline    = 1 << 0
	vmdkFlagRGD        = 1 << 1
	vmdkFlagZeroGrain  = 1 << 2
	vmdkFlagCompressed = 1 << 16
	vmdkFlagMarkers    = 1 << 17
	vmdkGDAtEnd        = math.MaxUint64
	vmdkDeflate        = 1
	vmdkGTEZeroed      = 1 // a zeroed grain (with vmdkFlagZeroGrain)

	vmdkMarkerEOS    = 0
	vmdkMarkerGT     = 1
	vmdkMarkerGD     = 2
	vmdkMarkerFooter = 3

	vmdkMonolithicSparse = "monolithicSparse"
	vmdkStreamOptimized  = "streamOptimized"

	vmdkDefaultHWVersion    = 4 // qemu's default
	vmdkMinHWVersion        = 4 // VMware's oldest virtual hardware that reads these disks
	vmdkMaxHWVersion        = 21
	vmdkDefaultToolsVersion = "2147483647" // qemu's default ddb.toolsVersion
	vmdkStdoutName          = "disk.vmdk"
)

// vmdkAdapters are qemu's adapter_type values.
var vmdkAdapters = []string{"ide", "buslogic", "lsilogic", "legacyESX"}

// vmdkConfig is what the options say, common to both subformats.
type vmdkConfig struct {
	name       string // the output, for errors ("standard output" for "-")
	subformat  string
	adapter    string
	hwVersion  int
	tools      string
	zeroed     bool
	cid        uint32
	uuid       []byte // 16 bytes, or nil for no ddb.uuid
	extentName string
	grain      int64 // bytes
	sync       bool
}

func newVMDKWriter(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	cfg, err := parseVMDKOptions(name, o)
	if err != nil {
		return nil, err
	}
	if cfg.subformat == vmdkStreamOptimized {
		if name == "-" {
			if stdout == nil {
				return nil, errors.New("vmdk: no standard output to write to")
			}
			return newVMDKStream(cfg, nil, stdout), nil
		}
		rf, err := CreateRaw(name, RawOptions{Sync: cfg.sync})
		if err != nil {
			return nil, err
		}
		return newVMDKStream(cfg, rf, nil), nil
	}
	if name == "-" {
		return nil, errors.New("vmdk: a monolithicSparse file cannot be written to standard output (its tables come first); use -o subformat=streamOptimized")
	}
	rf, err := CreateRaw(name, RawOptions{Sync: cfg.sync})
	if err != nil {
		return nil, err
	}
	return &vmdkSparseWriter{cfg: cfg, rf: rf}, nil
}

// parseVMDKOptions reads the -o keys (and -c) into a vmdkConfig.
func parseVMDKOptions(name string, o FormatOptions) (vmdkConfig, error) {
	used := map[string]bool{}
	cfg := vmdkConfig{name: name, subformat: vmdkMonolithicSparse, adapter: "ide", tools: vmdkDefaultToolsVersion,
		grain: vmdkDefaultGrain, sync: o.Sync}
	if name == "-" {
		cfg.name = "standard output"
	}
	bad := func(key, val, msg string, args ...any) error {
		return fmt.Errorf("vmdk: -o %s=%s: %s", key, val, fmt.Sprintf(msg, args...))
	}
	if v, ok := o.take(used, "subformat"); ok {
		switch v {
		case vmdkMonolithicSparse, vmdkStreamOptimized:
			cfg.subformat = v
		case "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "vmfs", "vmfsSparse":
			return cfg, bad("subformat", v, "glimpse writes only the subformats that keep the disk in one file: monolithicSparse and streamOptimized")
		default:
			return cfg, bad("subformat", v, "unknown subformat (monolithicSparse or streamOptimized)")
		}
	}
	if v, ok := o.take(used, "adapter_type"); ok {
		found := false
		for _, a := range vmdkAdapters {
			found = found || a == v
		}
		if !found {
			return cfg, bad("adapter_type", v, "unknown adapter type (%s)", strings.Join(vmdkAdapters, ", "))
		}
		cfg.adapter = v
	}
	hw, hasHW := o.take(used, "hwversion")
	cfg.hwVersion = vmdkDefaultHWVersion
	if hasHW {
		n, err := strconv.Atoi(hw)
		if err != nil || n < vmdkMinHWVersion || n > vmdkMaxHWVersion {
			return cfg, bad("hwversion", hw, "want a virtual hardware version from %d to %d", vmdkMinHWVersion, vmdkMaxHWVersion)
		}
		cfg.hwVersion = n
	}
	if v, ok := o.take(used, "compat6"); ok {
		on, err := vmdkBool(v)
		if err != nil {
			return cfg, bad("compat6", v, "%v", err)
		}
		if on {
			if hasHW {
				return cfg, errors.New("vmdk: compat6 and hwversion exclude each other (compat6 means hwversion=6)")
			}
			cfg.hwVersion = 6
		}
	}
	if v, ok := o.take(used, "toolsversion"); ok {
		n, err := strconv.ParseUint(v, 10, 31)
		if err != nil {
			return cfg, bad("toolsversion", v, "want a decimal number up to 2147483647")
		}
		cfg.tools = strconv.FormatUint(n, 10)
	}
	if v, ok := o.take(used, "zeroed_grain"); ok {
		on, err := vmdkBool(v)
		if err != nil {
			return cfg, bad("zeroed_grain", v, "%v", err)
		}
		cfg.zeroed = on
	}
	for _, k := range []string{"backing_file", "backing_fmt"} {
		if v, ok := o.take(used, k); ok {
			return cfg, bad(k, v, "glimpse writes no delta disks: the output holds the whole disk")
		}
	}
	if v, ok := o.take(used, "cid"); ok {
		n, err := strconv.ParseUint(v, 16, 32)
		if err != nil || len(v) > 8 || n == math.MaxUint32 {
			return cfg, bad("cid", v, "want 1 to 8 hex digits, not ffffffff (which means \"no parent\")")
		}
		cfg.cid = uint32(n)
	} else {
		var b [4]byte
		for {
			if _, err := rand.Read(b[:]); err != nil {
				return cfg, err
			}
			if cfg.cid = binary.LittleEndian.Uint32(b[:]); cfg.cid != math.MaxUint32 {
				break
			}
		}
	}
	if v, ok := o.take(used, "uuid"); ok {
		u, err := vmdkParseUUID(v)
		if err != nil {
			return cfg, bad("uuid", v, "%v", err)
		}
		cfg.uuid = u
	}
	if name == "-" {
		cfg.extentName = vmdkStdoutName
	} else {
		target := name
		if t, err := filepath.EvalSymlinks(name); err == nil {
			target = t // the file CreateRaw replaces
		}
		cfg.extentName = filepath.Base(target)
	}
	v, explicit := o.take(used, "extent_name")
	if explicit {
		cfg.extentName = v
	}
	if err := vmdkCheckExtentName(cfg.extentName); err != nil {
		if explicit {
			return cfg, bad("extent_name", v, "%v", err)
		}
		return cfg, fmt.Errorf("vmdk: the output's name %q cannot be the descriptor's extent name: %v; name it with -o extent_name=", cfg.extentName, err)
	}
	if v, ok := o.take(used, "grain_size"); ok {
		n, err := parseVMDKSize(v)
		if err != nil || n < vmdkMinGrain || n > vmdkMaxGrain || n&(n-1) != 0 {
			return cfg, bad("grain_size", v, "want a power of two from 4k to 1M")
		}
		cfg.grain = n
	}
	if err := o.unknown(inspect.VMDK, used, "subformat", "adapter_type", "hwversion", "compat6", "toolsversion",
		"zeroed_grain", "backing_file", "backing_fmt", "cid", "uuid", "extent_name", "grain_size"); err != nil {
		return cfg, err
	}
	if cfg.subformat == vmdkMonolithicSparse && o.Compress {
		return cfg, errors.New("vmdk: -c compresses only streamOptimized grains; add -o subformat=streamOptimized")
	}
	if cfg.subformat == vmdkStreamOptimized && cfg.zeroed {
		return cfg, errors.New("vmdk: zeroed_grain applies to monolithicSparse only (a streamOptimized file leaves zero grains out)")
	}
	return cfg, nil
}

// vmdkBool reads qemu's boolean spellings.
func vmdkBool(v string) (bool, error) {
	switch v {
	case "on", "yes", "true":
		return true, nil
	case "off", "no", "false":
		return false, nil
	}
	return false, errors.New("want on or off")
}

// parseVMDKSize reads qemu's size spelling: bytes, or a number with a k, M or G suffix.
func parseVMDKSize(v string) (int64, error) {
	mul := int64(1)
	switch {
	case strings.HasSuffix(v, "k"), strings.HasSuffix(v, "K"):
		mul = 1 << 10
	case strings.HasSuffix(v, "M"):
		mul = 1 << 20
	case strings.HasSuffix(v, "G"):
		mul = 1 << 30
	}
	if mul != 1 {
		v = v[:len(v)-1]
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mul {
		return 0, errors.New("not a size")
	}
	return n * mul, nil
}

// vmdkParseUUID reads a UUID as 32 hex digits, with or without the dashes of RFC 9562.
func vmdkParseUUID(v string) ([]byte, error) {
	s := v
	if len(s) == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-' {
		s = s[:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	}
	if len(s) != 32 {
		return nil, errors.New("want a UUID (8-4-4-4-12 hex digits)")
	}
	u, err := hex.DecodeString(s)
	if err != nil {
		return nil, errors.New("want a UUID (8-4-4-4-12 hex digits)")
	}
	return u, nil
}

// vmdkCheckExtentName refuses names a descriptor cannot carry, or that readers would take for
// a file elsewhere (inspect reports extents with a directory part as host extents).
func vmdkCheckExtentName(n string) error {
	switch {
	case n == "" || n == "." || n == "..":
		return errors.New("empty")
	case len(n) > 255:
		return errors.New("longer than 255 bytes")
	case strings.ContainsAny(n, `/\:"`):
		return errors.New(`contains / \ : or "`)
	}
	for i := 0; i < len(n); i++ {
		if n[i] < 0x20 || n[i] >= 0x7f {
			return errors.New("holds a control character or a byte outside printable ASCII (descriptors have no portable encoding for it)")
		}
	}
	return nil
}

// vmdkLayout is the geometry of the grain directory and tables for a capacity.
type vmdkLayout struct {
	size      int64 // virtual size, bytes
	capacity  int64 // sectors
	grain     int64 // bytes
	grainSecs int64 // sectors per grain
	grains    int64 // grains covering the capacity
	gdEntries int64 // grain tables covering the capacity
	gdSectors int64 // sectors of one grain directory
}

func newVMDKLayout(cfg *vmdkConfig, size int64) (vmdkLayout, error) {
	if size < 0 || size > vmdkMaxSize {
		return vmdkLayout{}, fmt.Errorf("%s: a virtual size of %d bytes is more than the vmdk writer's limit (%d bytes, 64 TiB)", cfg.name, size, int64(vmdkMaxSize))
	}
	if size == 0 {
		// qemu-img writes such a file and then cannot open it: to readers, a header with
		// capacity 0 names a descriptor whose extents live in other files.
		return vmdkLayout{}, fmt.Errorf("%s: a vmdk cannot hold an empty (0-byte) disk: a sparse header with capacity 0 means a descriptor file to its readers", cfg.name)
	}
	l := vmdkLayout{size: size, grain: cfg.grain, grainSecs: cfg.grain / vmdkSectorSize}
	l.capacity = (size + vmdkSectorSize - 1) / vmdkSectorSize
	l.grains = (l.capacity + l.grainSecs - 1) / l.grainSecs
	l.gdEntries = (l.grains + vmdkGTEsPerGT - 1) / vmdkGTEsPerGT
	l.gdSectors = (l.gdEntries*4 + vmdkSectorSize - 1) / vmdkSectorSize
	if l.gdEntries*4 > vmdkMaxGDBytes {
		return vmdkLayout{}, fmt.Errorf("%s: a virtual size of %d bytes needs a grain directory of %d bytes with %d-byte grains, more than the vmdk writer's limit (%d bytes); use a larger grain_size", cfg.name, size, l.gdEntries*4, l.grain, vmdkMaxGDBytes)
	}
	return l, nil
}

// vmdkHeader is the hosted sparse extent header, in the spec's field order.
type vmdkHeader struct {
	version, flags      uint32
	capacity, grainSecs uint64
	descOff, descSecs   uint64
	rgdOff, gdOff       uint64
	overhead            uint64
	compress            uint16
}

// encode writes the 512-byte header (magic "KDMV", the newline test bytes "\n \r\n").
func (h vmdkHeader) encode(b []byte) {
	clear(b[:vmdkSectorSize])
	le := binary.LittleEndian
	copy(b, "KDMV")
	le.PutUint32(b[4:], h.version)
	le.PutUint32(b[8:], h.flags)
	le.PutUint64(b[12:], h.capacity)
	le.PutUint64(b[20:], h.grainSecs)
	le.PutUint64(b[28:], h.descOff)
	le.PutUint64(b[36:], h.descSecs)
	le.PutUint32(b[44:], vmdkGTEsPerGT)
	le.PutUint64(b[48:], h.rgdOff)
	le.PutUint64(b[56:], h.gdOff)
	le.PutUint64(b[64:], h.overhead)
	b[72] = 0 // uncleanShutdown
	copy(b[73:77], "\n \r\n")
	le.PutUint16(b[77:], h.compress)
}

// descriptor is the embedded descriptor text in qemu's layout (which VMware and VirtualBox
// read), zero-padded to vmdkDescSectors sectors.
func (cfg *vmdkConfig) descriptor(l vmdkLayout) ([]byte, error) {
	var b strings.Builder
	b.WriteString("# Disk DescriptorFile\nversion=1\n")
	fmt.Fprintf(&b, "CID=%08x\nparentCID=ffffffff\ncreateType=%q\n\n", cfg.cid, cfg.subformat)
	fmt.Fprintf(&b, "# Extent description\nRW %d SPARSE \"%s\"\n\n", l.capacity, cfg.extentName)
	heads := int64(255)
	if cfg.adapter == "ide" {
		heads = 16
	}
	b.WriteString("# The Disk Data Base\n#DDB\n\n")
	fmt.Fprintf(&b, "ddb.virtualHWVersion = \"%d\"\n", cfg.hwVersion)
	fmt.Fprintf(&b, "ddb.geometry.cylinders = \"%d\"\n", l.capacity/(63*heads))
	fmt.Fprintf(&b, "ddb.geometry.heads = \"%d\"\n", heads)
	b.WriteString("ddb.geometry.sectors = \"63\"\n")
	fmt.Fprintf(&b, "ddb.adapterType = \"%s\"\n", cfg.adapter)
	fmt.Fprintf(&b, "ddb.toolsVersion = \"%s\"\n", cfg.tools)
	if cfg.uuid != nil {
		u := cfg.uuid
		var parts []string
		for i, c := range u {
			sep := " "
			if i == 0 {
				sep = ""
			} else if i == 8 {
				sep = "-"
			}
			parts = append(parts, sep+hex.EncodeToString([]byte{c}))
		}
		fmt.Fprintf(&b, "ddb.uuid = \"%s\"\n", strings.Join(parts, ""))
	}
	text := b.String()
	if len(text) > vmdkDescSectors*vmdkSectorSize {
		return nil, fmt.Errorf("%s: internal error: the descriptor takes %d bytes, more than its %d sectors", cfg.name, len(text), vmdkDescSectors)
	}
	out := make([]byte, vmdkDescSectors*vmdkSectorSize)
	copy(out, text)
	return out, nil
}

// vmdkGT is the grain table being filled: the pipeline hands chunks in guest order, so one
// table at a time is enough, and it is written out once the guest has passed its range.
type vmdkGT struct {
	idx  int64 // which table; -1 before the first grain
	used bool  // holds at least one grain
	ents [vmdkGTEsPerGT]uint32
	buf  [vmdkGTEsPerGT * 4]byte
}

// bytes encodes the table.
func (t *vmdkGT) bytes() []byte {
	for i, e := range t.ents {
		binary.LittleEndian.PutUint32(t.buf[i*4:], e)
	}
	return t.buf[:]
}

// vmdkCheckChunk checks the pipeline's promises the writers rely on: chunks in order, at
// grain boundaries, covering the disk.
func vmdkCheckChunk(name string, c *Chunk, pos int64, l vmdkLayout) error {
	switch {
	case c.Off != pos:
		return fmt.Errorf("%s: internal error: %v arrives when the vmdk is at guest offset %d", name, c, pos)
	case c.Len <= 0 || c.Off+c.Len > l.size:
		return fmt.Errorf("%s: internal error: %v outside the disk (size %d)", name, c, l.size)
	case c.Off%l.grain != 0 || (c.Off+c.Len != l.size && c.Len%l.grain != 0):
		return fmt.Errorf("%s: internal error: %v does not cover whole grains of %d bytes", name, c, l.grain)
	case !c.Zero() && int64(len(c.Data)) != c.Len:
		return fmt.Errorf("%s: internal error: %v carries %d bytes", name, c, len(c.Data))
	}
	return nil
}

// vmdkMarker encodes a metadata marker sector (numSectors, size 0, type).
func vmdkMarker(b []byte, sectors uint64, typ uint32) {
	clear(b[:vmdkSectorSize])
	binary.LittleEndian.PutUint64(b, sectors)
	binary.LittleEndian.PutUint32(b[12:], typ)
}
