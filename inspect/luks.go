package inspect

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// LUKS encrypted volumes, version 1 (the binary header of the LUKS On-Disk Format
// Specification 1.2.3, which qemu reads: crypto/block-luks.c) and version 2 (a binary
// header followed by a JSON area). glimpse never decrypts: it describes the header, the
// virtual size is the payload's (as qemu-img reports it for version 1), reads fail with
// ErrUnsupported, and any version other than 1 is a FindLUKSVersion finding, as OpenStack
// refuses it. All binary fields are big-endian.

const (
	luksMagic          = "LUKS\xba\xbe"
	luks1HeaderSize    = 592
	luksSectorSize     = 512
	luksNumKeySlots    = 8
	luksSlotEnabled    = 0x00ac71f3
	luksSlotDisabled   = 0x0000dead
	luksKeySlotOffset  = 4096 // qemu: key material starts at or after 4 KiB
	luks2BinHeaderSize = 4096
	// luksMaxListed bounds the LUKS2 keyslots, segments and digests described.
	luksMaxListed = 32
)

// LUKSInfo is the format-specific detail of a LUKS volume. Fields follow qemu-img's names
// where they mean the same.
type LUKSInfo struct {
	Version uint16 `json:"version"`
	UUID    string `json:"uuid,omitempty"`
	// PayloadOffset is where the encrypted data starts, in bytes.
	PayloadOffset int64 `json:"payload-offset"`

	// Version 1.
	CipherName     string         `json:"cipher-name,omitempty"`
	CipherMode     string         `json:"cipher-mode,omitempty"`
	HashSpec       string         `json:"hash-spec,omitempty"`
	KeyBytes       uint32         `json:"key-bytes,omitempty"`
	MasterKeyIters uint32         `json:"master-key-iters,omitempty"`
	Slots          []LUKSKeySlot  `json:"slots,omitempty"`
	V2             *LUKS2Metadata `json:"luks2,omitempty"`
}

// LUKSKeySlot is one of the eight key slots of a LUKS1 header.
type LUKSKeySlot struct {
	Active    bool   `json:"active"`
	Iters     uint32 `json:"iters,omitempty"`
	KeyOffset int64  `json:"key-offset"` // bytes
	Stripes   uint32 `json:"stripes"`
}

// LUKS2Metadata is the binary header and the JSON area of a LUKS2 volume.
type LUKS2Metadata struct {
	HeaderSize        uint64         `json:"header-size"`
	SequenceID        uint64         `json:"sequence-id"`
	Label             string         `json:"label,omitempty"`
	Subsystem         string         `json:"subsystem,omitempty"`
	ChecksumAlgorithm string         `json:"checksum-algorithm"`
	HeaderOffset      uint64         `json:"header-offset"`
	ChecksumValid     *bool          `json:"checksum-valid,omitempty"` // nil: algorithm not known
	Segments          []LUKS2Segment `json:"segments"`
	Keyslots          []LUKS2Keyslot `json:"keyslots"`
	Digests           int            `json:"digests"`
	Tokens            int            `json:"tokens"`
	Requirements      []string       `json:"requirements,omitempty"`
}

// LUKS2Segment is one data segment.
type LUKS2Segment struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	Offset     uint64 `json:"offset"`
	Size       string `json:"size"` // bytes, or "dynamic" (to the end of the device)
	Encryption string `json:"encryption,omitempty"`
	SectorSize int    `json:"sector-size,omitempty"`
}

// LUKS2Keyslot is one keyslot.
type LUKS2Keyslot struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	KeySize int    `json:"key-size"`
	KDF     string `json:"kdf,omitempty"`
	Offset  uint64 `json:"area-offset"`
	Size    uint64 `json:"area-size"`
	Cipher  string `json:"encryption,omitempty"`
}

type luksCore struct {
	info    LUKSInfo
	virtual int64
	finds   []Finding
}

func probeLUKS(p *probeData) bool {
	b := p.at(0, 8)
	return b != nil && string(b[:6]) == luksMagic
}

func openLUKS(o *opener) (core, error) {
	h, err := readAt(o.r, 0, 8, LUKS, "header")
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, wrongFormat(LUKS, "file shorter than a LUKS header")
		}
		return nil, err
	}
	if string(h[:6]) != luksMagic {
		return nil, wrongFormat(LUKS, "no LUKS magic")
	}
	version := binary.BigEndian.Uint16(h[6:])
	c := &luksCore{info: LUKSInfo{Version: version}}
	switch version {
	case 1:
		err = c.open1(o)
	case 2:
		err = c.open2(o)
	}
	if err != nil {
		return nil, err
	}
	if version != 1 {
		c.finds = append(c.finds, Finding{FindLUKSVersion,
			fmt.Sprintf("LUKS version %d: only version 1 is accepted (qemu and OpenStack read no other)", version)})
	}
	return c, nil
}

// payload sets the virtual size from the payload offset: the rest of the file, rounded up
// to a sector as qemu presents it.
func (c *luksCore) payload(o *opener, off int64, field string) {
	c.info.PayloadOffset = off
	if !o.sizeKnown {
		return
	}
	if off > o.size {
		c.finds = append(c.finds, Finding{FindPastEOF,
			fmt.Sprintf("the LUKS %s (%d bytes) is past the end of the file (%d bytes)", field, off, o.size)})
		return
	}
	c.virtual = alignUp(o.size-off, luksSectorSize)
}

func (c *luksCore) open1(o *opener) error {
	h, err := readAt(o.r, 0, luks1HeaderSize, LUKS, "header")
	if err != nil {
		return err
	}
	be := binary.BigEndian
	str := func(b []byte) string { return strings.ToValidUTF8(cstring(b), "\uFFFD") }
	i := &c.info
	i.CipherName, i.CipherMode, i.HashSpec = str(h[8:40]), str(h[40:72]), str(h[72:104])
	payload := be.Uint32(h[104:])
	i.KeyBytes = be.Uint32(h[108:])
	i.MasterKeyIters = be.Uint32(h[164:])
	i.UUID = str(h[168:208])
	if i.KeyBytes == 0 || i.KeyBytes > 1024 {
		return o.ferr(LUKS, "header", "key-bytes", 108, i.KeyBytes, "is not a key length (1 to 1024 bytes)")
	}
	// qemu's qcrypto_block_luks_check_header: every slot, active or not, is sane, inside
	// the header area and clear of the payload and of the other slots.
	const headerSectors = luksKeySlotOffset / luksSectorSize
	type area struct{ start, end uint64 }
	var areas [luksNumKeySlots]area
	for k := range luksNumKeySlots {
		s := h[208+48*k:]
		active, iters := be.Uint32(s), be.Uint32(s[4:])
		keyOff, stripes := be.Uint32(s[40:]), be.Uint32(s[44:])
		at := int64(208 + 48*k)
		if stripes == 0 {
			return o.ferr(LUKS, "key slot", "stripes", at+44, stripes, "slot %d is corrupt", k)
		}
		if active != luksSlotEnabled && active != luksSlotDisabled {
			return o.ferr(LUKS, "key slot", "active", at, fmt.Sprintf("0x%08x", active), "slot %d state is neither enabled nor disabled", k)
		}
		// splitkeylen_sectors: the anti-forensic material, in sectors rounded up to 4 KiB.
		sectors := (uint64(i.KeyBytes)*uint64(stripes) + luksSectorSize - 1) / luksSectorSize
		sectors = (sectors + headerSectors - 1) / headerSectors * headerSectors
		areas[k] = area{uint64(keyOff), uint64(keyOff) + sectors}
		if uint64(keyOff) < headerSectors {
			return o.ferr(LUKS, "key slot", "key material offset", at+40, keyOff, "slot %d overlaps the LUKS header", k)
		}
		if areas[k].end > uint64(payload) {
			return o.ferr(LUKS, "key slot", "key material offset", at+40, keyOff, "slot %d (%d sectors) overlaps the encrypted payload at sector %d", k, sectors, payload)
		}
		for j := range k {
			if areas[k].start < areas[j].end && areas[j].start < areas[k].end {
				return o.ferr(LUKS, "key slot", "key material offset", at+40, keyOff, "slots %d and %d overlap", j, k)
			}
		}
		slot := LUKSKeySlot{Active: active == luksSlotEnabled, KeyOffset: int64(keyOff) * luksSectorSize, Stripes: stripes}
		if slot.Active {
			slot.Iters = iters
		}
		i.Slots = append(i.Slots, slot)
	}
	c.payload(o, int64(payload)*luksSectorSize, "payload offset")
	return nil
}

// luks2JSON is the part of the LUKS2 JSON metadata glimpse describes. Sizes and offsets are
// decimal strings in the format, to hold 64-bit values.
type luks2JSON struct {
	Keyslots map[string]struct {
		Type    string `json:"type"`
		KeySize int    `json:"key_size"`
		Area    struct {
			Offset     string `json:"offset"`
			Size       string `json:"size"`
			Encryption string `json:"encryption"`
		} `json:"area"`
		KDF struct {
			Type string `json:"type"`
		} `json:"kdf"`
	} `json:"keyslots"`
	Segments map[string]struct {
		Type       string `json:"type"`
		Offset     string `json:"offset"`
		Size       string `json:"size"`
		Encryption string `json:"encryption"`
		SectorSize int    `json:"sector_size"`
	} `json:"segments"`
	Digests map[string]json.RawMessage `json:"digests"`
	Tokens  map[string]json.RawMessage `json:"tokens"`
	Config  struct {
		JSONSize     string `json:"json_size"`
		KeyslotsSize string `json:"keyslots_size"`
		Requirements struct {
			Mandatory []string `json:"mandatory"`
		} `json:"requirements"`
	} `json:"config"`
}

func (c *luksCore) open2(o *opener) error {
	h, err := readAt(o.r, 0, luks2BinHeaderSize, LUKS, "header")
	if err != nil {
		return err
	}
	be := binary.BigEndian
	str := func(b []byte) string { return strings.ToValidUTF8(cstring(b), "\uFFFD") }
	m := &LUKS2Metadata{
		HeaderSize:        be.Uint64(h[8:]),
		SequenceID:        be.Uint64(h[16:]),
		Label:             str(h[24:72]),
		ChecksumAlgorithm: str(h[72:104]),
		Subsystem:         str(h[208:256]),
		HeaderOffset:      be.Uint64(h[256:]),
	}
	c.info.UUID = str(h[168:208])
	c.info.V2 = m
	// The header size covers the binary header and the JSON area: 16 KiB to 4 MiB, a power
	// of two (the LUKS2 specification).
	hs := m.HeaderSize
	if hs < 16<<10 || hs > 4<<20 || hs&(hs-1) != 0 {
		return o.ferr(LUKS, "LUKS2 header", "hdr_size", 8, hs, "is not a power of two from 16 KiB to 4 MiB")
	}
	if m.HeaderOffset != 0 {
		return o.ferr(LUKS, "LUKS2 header", "hdr_offset", 256, m.HeaderOffset, "is not 0 in the primary header")
	}
	area, err := readAt(o.r, 0, int64(hs), LUKS, "LUKS2 header and JSON area")
	if err != nil {
		return err
	}
	if hasher, err := newHash(strings.ToLower(m.ChecksumAlgorithm)); err == nil {
		sum := slices.Clone(area)
		clear(sum[448:512])
		hasher.Write(sum)
		got := hasher.Sum(nil)
		ok := bytes.Equal(got, h[448:448+len(got)])
		m.ChecksumValid = &ok
		if !ok {
			c.finds = append(c.finds, Finding{FindCorrupt, fmt.Sprintf("the LUKS2 header %s checksum does not match its content", m.ChecksumAlgorithm)})
		}
	}
	js := area[luks2BinHeaderSize:]
	if n := bytes.IndexByte(js, 0); n >= 0 {
		js = js[:n]
	}
	var meta luks2JSON
	if err := json.Unmarshal(js, &meta); err != nil {
		return o.ferr(LUKS, "LUKS2 JSON area", "", luks2BinHeaderSize, nil, "is not valid JSON: %v", err)
	}
	m.Digests, m.Tokens = len(meta.Digests), len(meta.Tokens)
	m.Requirements = meta.Config.Requirements.Mandatory
	num := func(s string) (uint64, bool) {
		v, err := strconv.ParseUint(s, 10, 64)
		return v, err == nil && v <= 1<<62
	}
	for _, id := range luksSortedIDs(meta.Keyslots) {
		k := meta.Keyslots[id]
		off, _ := num(k.Area.Offset)
		size, _ := num(k.Area.Size)
		m.Keyslots = append(m.Keyslots, LUKS2Keyslot{ID: id, Type: k.Type, KeySize: k.KeySize, KDF: k.KDF.Type,
			Offset: off, Size: size, Cipher: k.Area.Encryption})
	}
	payloadSet := false
	for _, id := range luksSortedIDs(meta.Segments) {
		s := meta.Segments[id]
		off, ok := num(s.Offset)
		if !ok {
			return o.ferr(LUKS, "LUKS2 JSON area", "segments."+id+".offset", luks2BinHeaderSize, s.Offset, "is not a byte offset")
		}
		if s.Size != "dynamic" {
			if _, ok := num(s.Size); !ok {
				return o.ferr(LUKS, "LUKS2 JSON area", "segments."+id+".size", luks2BinHeaderSize, s.Size, "is neither a byte count nor \"dynamic\"")
			}
		}
		m.Segments = append(m.Segments, LUKS2Segment{ID: id, Type: s.Type, Offset: off, Size: s.Size,
			Encryption: s.Encryption, SectorSize: s.SectorSize})
		if payloadSet {
			continue
		}
		// The first segment is the payload.
		payloadSet = true
		if s.Size == "dynamic" {
			c.payload(o, int64(off), "segment offset")
			continue
		}
		size, _ := num(s.Size)
		c.info.PayloadOffset = int64(off)
		c.virtual = int64(size)
		if end := off + size; end < 1<<62 && o.pastEOF(0, int64(end)) {
			c.finds = append(c.finds, Finding{FindPastEOF,
				fmt.Sprintf("LUKS2 segment %s (%d bytes at offset %d) runs past the end of the file (%d bytes)", id, size, off, o.size)})
		}
	}
	if !payloadSet {
		return o.ferr(LUKS, "LUKS2 JSON area", "segments", luks2BinHeaderSize, nil, "names no data segment")
	}
	return nil
}

// luksSortedIDs returns the numeric keys of a LUKS2 JSON object in numeric order, at most
// luksMaxListed of them.
func luksSortedIDs[V any](m map[string]V) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int {
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	})
	if len(ids) > luksMaxListed {
		ids = ids[:luksMaxListed]
	}
	return ids
}

func (c *luksCore) size() int64 { return c.virtual }

func (c *luksCore) describe(info *Info) {
	info.Encrypted = true
	info.FormatSpecific = &FormatSpecific{Type: LUKS, Data: c.info}
}

func (c *luksCore) findings() []Finding { return c.finds }

func (c *luksCore) lookup(off int64) (segment, error) {
	return segment{}, unsupported(LUKS, "glimpse does not decrypt LUKS volumes")
}
