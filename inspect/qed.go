package inspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// QED, qemu's enhanced disk format (deprecated): detected, described and always refused
// (FindUnsupportedFormat), as OpenStack refuses it. Guest data is never read. The header
// is little-endian; qemu's block/qed.c is the reference for its checks.

const (
	qedMagic          = "QED\x00"
	qedHeaderSize     = 64
	qedMinClusterSize = 4 << 10
	qedMaxClusterSize = 64 << 20
	qedMinTableSize   = 1
	qedMaxTableSize   = 16
	// Feature bits.
	qedFBackingFile    = 0x01
	qedFNeedCheck      = 0x02
	qedFBackingNoProbe = 0x04
	qedKnownFeatures   = qedFBackingFile | qedFNeedCheck | qedFBackingNoProbe
	// qedMaxBackingName is qemu's limit (the name must fit its 1024-byte buffer).
	qedMaxBackingName = 1023
)

// QEDInfo is the format-specific detail of a QED image.
type QEDInfo struct {
	ClusterSize       uint32 `json:"cluster-size"`
	TableSize         uint32 `json:"table-size"`  // in clusters
	HeaderSize        uint32 `json:"header-size"` // in clusters
	Features          uint64 `json:"features"`
	CompatFeatures    uint64 `json:"compat-features"`
	AutoclearFeatures uint64 `json:"autoclear-features"`
	L1TableOffset     uint64 `json:"l1-table-offset"`
	ImageSize         uint64 `json:"image-size"`
	BackingFilename   string `json:"backing-filename,omitempty"`
	BackingOffset     uint32 `json:"backing-filename-offset,omitempty"`
	BackingSize       uint32 `json:"backing-filename-size,omitempty"`
	NeedCheck         bool   `json:"need-check,omitempty"`
}

type qedCore struct {
	info  QEDInfo
	finds []Finding
}

func probeQED(p *probeData) bool {
	b := p.at(0, qedHeaderSize)
	return b != nil && string(b[:4]) == qedMagic
}

func openQED(o *opener) (core, error) {
	h, err := readAt(o.r, 0, qedHeaderSize, QED, "header")
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, wrongFormat(QED, "file shorter than a QED header")
		}
		return nil, err
	}
	if string(h[:4]) != qedMagic {
		return nil, wrongFormat(QED, "no QED magic")
	}
	le := binary.LittleEndian
	info := QEDInfo{
		ClusterSize:       le.Uint32(h[4:]),
		TableSize:         le.Uint32(h[8:]),
		HeaderSize:        le.Uint32(h[12:]),
		Features:          le.Uint64(h[16:]),
		CompatFeatures:    le.Uint64(h[24:]),
		AutoclearFeatures: le.Uint64(h[32:]),
		L1TableOffset:     le.Uint64(h[40:]),
		ImageSize:         le.Uint64(h[48:]),
	}
	info.NeedCheck = info.Features&qedFNeedCheck != 0
	c := &qedCore{info: info}
	c.finds = append(c.finds, Finding{FindUnsupportedFormat, "qed is a deprecated qemu format that glimpse, like OpenStack, refuses"})

	// qemu's checks (bdrv_qed_do_open), in its order.
	if unknown := info.Features &^ qedKnownFeatures; unknown != 0 {
		c.finds = append(c.finds, Finding{FindUnknownFeature, fmt.Sprintf("qed features 0x%x are unknown", unknown)})
	}
	cs := info.ClusterSize
	if cs < qedMinClusterSize || cs > qedMaxClusterSize || cs&(cs-1) != 0 {
		return nil, o.ferr(QED, "header", "cluster_size", 4, cs, "is not a power of two from %d to %d", qedMinClusterSize, qedMaxClusterSize)
	}
	ts := info.TableSize
	if ts < qedMinTableSize || ts > qedMaxTableSize || ts&(ts-1) != 0 {
		return nil, o.ferr(QED, "header", "table_size", 8, ts, "is not a power of two from %d to %d", qedMinTableSize, qedMaxTableSize)
	}
	// qed_max_image_size: every L1 entry names an L2 table of the same size.
	entries := uint64(ts) * uint64(cs) / 8
	maxSize, ok := mul64(int64(entries*uint64(cs)), int64(entries))
	if !ok || maxSize > 1<<62 {
		maxSize = 1 << 62 // beyond any file glimpse reads
	}
	if info.ImageSize%512 != 0 || info.ImageSize > uint64(maxSize) {
		return nil, o.ferr(QED, "header", "image_size", 48, info.ImageSize, "is not a multiple of 512 within the %d bytes the tables can map", maxSize)
	}
	if info.HeaderSize == 0 || uint64(info.HeaderSize) > uint64(^uint32(0))/uint64(cs) {
		return nil, o.ferr(QED, "header", "header_size", 12, info.HeaderSize, "is not a cluster count whose bytes fit in 32 bits")
	}
	headerBytes := uint64(info.HeaderSize) * uint64(cs)
	l1 := info.L1TableOffset
	l1Bytes := uint64(ts) * uint64(cs)
	if l1%uint64(cs) != 0 || l1 < headerBytes || l1 > 1<<62 {
		return nil, o.ferr(QED, "header", "l1_table_offset", 40, l1, "is not a cluster boundary after the header")
	}
	if o.pastEOF(int64(l1), int64(l1Bytes)) {
		c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf("the L1 table (%d bytes at offset %d) runs past the end of the file (%d bytes)", l1Bytes, l1, o.size)})
	}

	if info.Features&qedFBackingFile != 0 {
		info.BackingOffset, info.BackingSize = le.Uint32(h[56:]), le.Uint32(h[60:])
		end := uint64(info.BackingOffset) + uint64(info.BackingSize)
		if end > headerBytes || info.BackingOffset < qedHeaderSize {
			return nil, o.ferr(QED, "header", "backing_filename_offset", 56, info.BackingOffset, "with size %d lies outside the %d-byte header", info.BackingSize, headerBytes)
		}
		if info.BackingSize > qedMaxBackingName {
			return nil, o.ferr(QED, "header", "backing_filename_size", 60, info.BackingSize, "exceeds %d bytes", qedMaxBackingName)
		}
		name, err := readAt(o.r, int64(info.BackingOffset), int64(info.BackingSize), QED, "backing file name")
		if err != nil {
			return nil, err
		}
		info.BackingFilename = strings.ToValidUTF8(string(name), "\uFFFD")
		c.finds = append(c.finds, Finding{FindBackingFile, fmt.Sprintf("qed image has backing file %q", info.BackingFilename)})
	}
	c.info = info
	return c, nil
}

func (c *qedCore) size() int64 { return int64(c.info.ImageSize) }

func (c *qedCore) describe(info *Info) {
	info.ClusterSize = int64(c.info.ClusterSize)
	info.BackingFilename = c.info.BackingFilename
	if c.info.BackingFilename != "" && c.info.Features&qedFBackingNoProbe != 0 {
		info.BackingFormat = "raw"
	}
	info.FormatSpecific = &FormatSpecific{Type: QED, Data: c.info}
}

func (c *qedCore) findings() []Finding { return c.finds }

func (c *qedCore) lookup(off int64) (segment, error) {
	return segment{}, unsupported(QED, "glimpse does not read qed images")
}
