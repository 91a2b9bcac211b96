package inspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// ISO 9660 (ECMA-119) and UDF optical disc images. The first 16 sectors of 2048 bytes are
// the system area (free for anything: isohybrid puts an MBR or a GPT there, a polyglot
// another format's header); the volume descriptors follow from sector 16 to a terminator,
// and a UDF volume recognition sequence (BEA01, NSR02/NSR03, TEA01) may follow them or
// stand alone. qemu has no ISO driver: it reads an ISO as raw, and so does glimpse (the
// virtual size is the file's, rounded up to a sector); the volume size the primary
// descriptor records is reported in ISOInfo. Both-endian fields must agree, which makes the
// probe strict enough that a random disk does not match by chance.

const (
	isoSectorSize     = 2048
	isoFirstSector    = 16
	isoMaxDescriptors = 64 // volume descriptors and VRS descriptors walked at most
	isoMaxBootEntries = 64
)

// ISOInfo is the format-specific detail of an ISO image.
type ISOInfo struct {
	// Descriptors lists the volume descriptors in order: primary, supplementary,
	// enhanced, boot, partition, terminator, then the UDF identifiers (BEA01, NSR03, …).
	Descriptors          []string        `json:"descriptors"`
	SystemID             string          `json:"system-id,omitempty"`
	VolumeID             string          `json:"volume-id,omitempty"`
	VolumeSetID          string          `json:"volume-set-id,omitempty"`
	PublisherID          string          `json:"publisher-id,omitempty"`
	PreparerID           string          `json:"preparer-id,omitempty"`
	ApplicationID        string          `json:"application-id,omitempty"`
	VolumeSpaceSize      uint32          `json:"volume-space-size,omitempty"` // in logical blocks
	LogicalBlockSize     uint16          `json:"logical-block-size,omitempty"`
	VolumeSize           int64           `json:"volume-size,omitempty"` // bytes, from the primary descriptor
	VolumeSetSize        uint16          `json:"volume-set-size,omitempty"`
	VolumeSequenceNumber uint16          `json:"volume-sequence-number,omitempty"`
	RootDirectory        *ISODirectory   `json:"root-directory,omitempty"`
	Created              string          `json:"created,omitempty"`
	Joliet               bool            `json:"joliet,omitempty"`
	JolietLevel          int             `json:"joliet-level,omitempty"`
	RockRidge            bool            `json:"rock-ridge,omitempty"`
	ElTorito             *ISOElTorito    `json:"el-torito,omitempty"`
	UDF                  string          `json:"udf,omitempty"`             // NSR02 (UDF 1.x) or NSR03 (UDF 2.x)
	PartitionTable       *PartitionTable `json:"partition-table,omitempty"` // a hybrid ISO's MBR or GPT
}

// ISODirectory is the root directory record of the primary descriptor.
type ISODirectory struct {
	Extent uint32 `json:"extent"` // logical block
	Size   uint32 `json:"size"`   // bytes
}

// ISOElTorito is the El Torito boot record and its boot catalog.
type ISOElTorito struct {
	CatalogLBA   uint32         `json:"catalog-lba"`
	CatalogValid bool           `json:"catalog-valid"`
	Platform     string         `json:"platform,omitempty"`
	ID           string         `json:"id,omitempty"`
	Entries      []ISOBootEntry `json:"entries,omitempty"`
}

// ISOBootEntry is one boot image of the catalog.
type ISOBootEntry struct {
	Platform    string `json:"platform"`
	Bootable    bool   `json:"bootable"`
	Media       string `json:"media"`
	LoadSegment uint16 `json:"load-segment,omitempty"`
	SystemType  uint8  `json:"system-type,omitempty"`
	SectorCount uint16 `json:"sector-count"` // 512-byte sectors loaded
	LoadRBA     uint32 `json:"load-rba"`     // 2048-byte sector of the boot image
}

type isoCore struct {
	r        io.ReaderAt
	fileSize int64
	virtual  int64
	info     ISOInfo
	finds    []Finding
}

// isoVolumeDescriptor reports whether d starts like an ISO 9660 volume descriptor.
func isoVolumeDescriptor(d []byte) bool {
	if string(d[1:6]) != "CD001" {
		return false
	}
	switch d[0] {
	case 0, 1, 3, 255:
		return d[6] == 1
	case 2:
		return d[6] == 1 || d[6] == 2 // supplementary, or enhanced (ISO 9660:1999)
	}
	return false
}

// isoVRSDescriptor returns the identifier of a UDF volume structure descriptor, or "".
func isoVRSDescriptor(d []byte) string {
	if d[0] != 0 || d[6] != 1 {
		return ""
	}
	switch id := string(d[1:6]); id {
	case "BEA01", "NSR02", "NSR03", "TEA01", "BOOT2", "CDW02":
		return id
	}
	return ""
}

func isoBoth16(d []byte) (uint16, bool) {
	le, be := binary.LittleEndian.Uint16(d), binary.BigEndian.Uint16(d[2:])
	return le, le == be
}

func isoBoth32(d []byte) (uint32, bool) {
	le, be := binary.LittleEndian.Uint32(d), binary.BigEndian.Uint32(d[4:])
	return le, le == be
}

// isoPVDValid checks a primary volume descriptor: every both-endian field agrees, the
// block size is one ECMA-119 allows, and the root directory record has its fixed length.
func isoPVDValid(d []byte) bool {
	if d[0] != 1 || string(d[1:6]) != "CD001" || d[6] != 1 || d[7] != 0 {
		return false
	}
	vss, ok1 := isoBoth32(d[80:])
	_, ok2 := isoBoth16(d[120:])
	_, ok3 := isoBoth16(d[124:])
	lbs, ok4 := isoBoth16(d[128:])
	_, ok5 := isoBoth32(d[132:])
	_, ok6 := isoBoth32(d[156+2:])
	_, ok7 := isoBoth32(d[156+10:])
	return ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 && vss > 0 &&
		(lbs == 512 || lbs == 1024 || lbs == 2048) && d[156] == 34
}

func probeISO(p *probeData) bool {
	sector := func(i int) []byte { return p.at(int64(i)*isoSectorSize, isoSectorSize) }
	d := sector(isoFirstSector)
	if d == nil {
		return false
	}
	if isoVRSDescriptor(d) == "BEA01" {
		for i := isoFirstSector + 1; i < isoFirstSector+isoMaxDescriptors; i++ {
			d := sector(i)
			if d == nil {
				return false
			}
			switch isoVRSDescriptor(d) {
			case "NSR02", "NSR03":
				return true
			case "", "TEA01":
				return false
			}
		}
		return false
	}
	for i := isoFirstSector; i < isoFirstSector+isoMaxDescriptors; i++ {
		d := sector(i)
		if d == nil || !isoVolumeDescriptor(d) || d[0] == 255 {
			return false
		}
		if isoPVDValid(d) {
			return true
		}
	}
	return false
}

// isoText trims an a-character or d-character field.
func isoText(b []byte) string {
	return strings.ToValidUTF8(strings.TrimRight(cstring(b), " "), "\uFFFD")
}

// isoDate formats a 17-byte dec-datetime, or returns "" when it is unset or malformed.
func isoDate(b []byte) string {
	for _, c := range b[:16] {
		if c < '0' || c > '9' {
			return ""
		}
	}
	n := func(i, w int) int {
		v := 0
		for _, c := range b[i : i+w] {
			v = v*10 + int(c-'0')
		}
		return v
	}
	year, month, day := n(0, 4), n(4, 2), n(6, 2)
	if year == 0 || month < 1 || month > 12 || day < 1 || day > 31 {
		return ""
	}
	tz := int(int8(b[16]))
	if tz < -48 || tz > 52 {
		tz = 0
	}
	t := time.Date(year, time.Month(month), day, n(8, 2), n(10, 2), n(12, 2), n(14, 2)*10_000_000,
		time.FixedZone("", tz*15*60))
	return t.Format(time.RFC3339)
}

func openISO(o *opener) (core, error) {
	c := &isoCore{r: o.r}
	info := &c.info
	var (
		sawPVD, sawVD bool
		bootLBA       uint32
		hasBoot       bool
		vrs           bool
	)
	read := func(i int) ([]byte, error) {
		off := int64(i) * isoSectorSize
		if b := o.probe.at(off, isoSectorSize); b != nil {
			return b, nil
		}
		return readAt(o.r, off, isoSectorSize, ISO, "volume descriptor")
	}
walk:
	for i := isoFirstSector; i < isoFirstSector+isoMaxDescriptors; i++ {
		d, err := read(i)
		if err != nil {
			var fe *FormatError
			if errors.As(err, &fe) {
				break // the file ends: what was read is all there is
			}
			return nil, err
		}
		if vrs || (i == isoFirstSector && isoVRSDescriptor(d) == "BEA01") {
			vrs = true
			id := isoVRSDescriptor(d)
			if id == "" {
				break
			}
			info.Descriptors = append(info.Descriptors, id)
			switch id {
			case "NSR02", "NSR03":
				info.UDF = id
			case "TEA01":
				break walk
			}
			continue
		}
		if !isoVolumeDescriptor(d) {
			break
		}
		sawVD = true
		switch d[0] {
		case 0:
			info.Descriptors = append(info.Descriptors, "boot")
			if !hasBoot && strings.TrimRight(string(d[7:39]), "\x00 ") == "EL TORITO SPECIFICATION" {
				hasBoot = true
				bootLBA = binary.LittleEndian.Uint32(d[71:])
			}
		case 1:
			info.Descriptors = append(info.Descriptors, "primary")
			if sawPVD {
				continue
			}
			if !isoPVDValid(d) {
				return nil, o.ferr(ISO, "primary volume descriptor", "", int64(i)*isoSectorSize, nil, "has both-endian fields that disagree or an invalid block size")
			}
			sawPVD = true
			c.primary(d)
		case 2:
			if d[6] == 2 {
				info.Descriptors = append(info.Descriptors, "enhanced")
				continue
			}
			info.Descriptors = append(info.Descriptors, "supplementary")
			esc := string(d[88:91])
			if lvl := strings.Index("@CE", esc[2:]); esc[:2] == "%/" && lvl >= 0 && !info.Joliet {
				info.Joliet, info.JolietLevel = true, lvl+1
			}
		case 3:
			info.Descriptors = append(info.Descriptors, "partition")
		case 255:
			info.Descriptors = append(info.Descriptors, "terminator")
			vrs = true // a UDF bridge disc has its VRS after the terminator
			if i+1 < isoFirstSector+isoMaxDescriptors {
				next, err := read(i + 1)
				if err != nil {
					var fe *FormatError
					if errors.As(err, &fe) {
						break walk
					}
					return nil, err
				}
				if isoVRSDescriptor(next) == "" {
					break walk
				}
			}
		}
	}
	if !sawVD && info.UDF == "" {
		return nil, wrongFormat(ISO, "no ISO 9660 volume descriptor or UDF recognition sequence at sector 16")
	}
	if sawVD && !sawPVD {
		return nil, o.ferr(ISO, "volume descriptor set", "", isoFirstSector*isoSectorSize, nil, "has no primary volume descriptor")
	}

	if sawPVD {
		if err := c.rockRidge(o); err != nil {
			return nil, err
		}
	}
	if hasBoot {
		if err := c.elTorito(o, bootLBA); err != nil {
			return nil, err
		}
	}
	pt, finds, err := parsePartitionTable(o, true)
	if err != nil {
		return nil, err
	}
	info.PartitionTable = pt
	c.finds = append(c.finds, finds...)

	if o.sizeKnown {
		c.fileSize = o.size
		c.virtual = alignUp(o.size, 512)
		if info.VolumeSize > o.size {
			c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf("the ISO volume (%d blocks of %d bytes) runs past the end of the file (%d bytes)",
				info.VolumeSpaceSize, info.LogicalBlockSize, o.size)})
		}
	} else {
		c.fileSize, c.virtual = info.VolumeSize, info.VolumeSize
	}
	return c, nil
}

// primary records the primary volume descriptor's fields (already validated).
func (c *isoCore) primary(d []byte) {
	i := &c.info
	i.SystemID = isoText(d[8:40])
	i.VolumeID = isoText(d[40:72])
	i.VolumeSpaceSize = binary.LittleEndian.Uint32(d[80:])
	i.VolumeSetSize = binary.LittleEndian.Uint16(d[120:])
	i.VolumeSequenceNumber = binary.LittleEndian.Uint16(d[124:])
	i.LogicalBlockSize = binary.LittleEndian.Uint16(d[128:])
	i.VolumeSize = int64(i.VolumeSpaceSize) * int64(i.LogicalBlockSize)
	i.RootDirectory = &ISODirectory{Extent: binary.LittleEndian.Uint32(d[158:]), Size: binary.LittleEndian.Uint32(d[166:])}
	i.VolumeSetID = isoText(d[190:318])
	i.PublisherID = isoText(d[318:446])
	i.PreparerID = isoText(d[446:574])
	i.ApplicationID = isoText(d[574:702])
	i.Created = isoDate(d[813:830])
}

// rockRidge looks for the Rock Ridge extension in the "." record of the root directory:
// a SUSP "SP" entry followed by an "ER" entry naming RRIP, or RRIP entries ("RR", "PX").
// Continuation areas are not followed.
func (c *isoCore) rockRidge(o *opener) error {
	root := c.info.RootDirectory
	lbs := int64(c.info.LogicalBlockSize)
	off := int64(root.Extent) * lbs
	n := min(lbs, int64(root.Size), isoSectorSize)
	if n < 34 || o.pastEOF(off, n) {
		return nil
	}
	b, err := readAt(o.r, off, n, ISO, "root directory")
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil
		}
		return err
	}
	l := int(b[0])
	if l < 34 || l > len(b) {
		return nil
	}
	nameLen := int(b[32])
	pos := 33 + nameLen
	if nameLen%2 == 0 {
		pos++ // padding after an even-length name
	}
	first := true
	for pos+4 <= l {
		sig, el := string(b[pos:pos+2]), int(b[pos+2])
		if el < 4 || pos+el > l {
			break
		}
		e := b[pos : pos+el]
		switch {
		case first && (sig != "SP" || el < 7 || e[4] != 0xbe || e[5] != 0xef):
			return nil // no SUSP
		case sig == "ER" && el >= 8:
			idLen := int(e[4])
			if 8+idLen <= el {
				switch string(e[8 : 8+idLen]) {
				case "RRIP_1991A", "IEEE_P1282", "IEEE_1282":
					c.info.RockRidge = true
				}
			}
		case sig == "RR" || sig == "PX":
			c.info.RockRidge = true
		}
		first = false
		pos += el
	}
	return nil
}

var isoPlatforms = map[byte]string{0x00: "x86", 0x01: "PowerPC", 0x02: "Mac", 0xef: "EFI"}

func isoPlatform(b byte) string {
	if s, ok := isoPlatforms[b]; ok {
		return s
	}
	return fmt.Sprintf("0x%02x", b)
}

var isoMedia = [...]string{"no emulation", "1.2M floppy", "1.44M floppy", "2.88M floppy", "hard disk"}

// elTorito reads the boot catalog the El Torito boot record points to.
func (c *isoCore) elTorito(o *opener, lba uint32) error {
	et := &ISOElTorito{CatalogLBA: lba}
	c.info.ElTorito = et
	off := int64(lba) * isoSectorSize
	if o.pastEOF(off, isoSectorSize) {
		c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf("the El Torito boot catalog (sector %d) is past the end of the file", lba)})
		return nil
	}
	cat, err := readAt(o.r, off, isoSectorSize, ISO, "El Torito boot catalog")
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil
		}
		return err
	}
	// The validation entry: header 1, key 55 AA, and its 16 words sum to zero.
	var sum uint16
	for k := 0; k < 32; k += 2 {
		sum += binary.LittleEndian.Uint16(cat[k:])
	}
	if cat[0] != 1 || cat[30] != 0x55 || cat[31] != 0xaa || sum != 0 {
		return nil
	}
	et.CatalogValid = true
	platform := cat[1]
	et.Platform = isoPlatform(platform)
	et.ID = isoText(cat[4:28])
	entry := func(e []byte, platform byte) {
		if len(et.Entries) >= isoMaxBootEntries {
			return
		}
		media := fmt.Sprintf("0x%02x", e[1]&0x0f)
		if int(e[1]&0x0f) < len(isoMedia) {
			media = isoMedia[e[1]&0x0f]
		}
		et.Entries = append(et.Entries, ISOBootEntry{Platform: isoPlatform(platform), Bootable: e[0] == 0x88, Media: media,
			LoadSegment: binary.LittleEndian.Uint16(e[2:]), SystemType: e[4],
			SectorCount: binary.LittleEndian.Uint16(e[6:]), LoadRBA: binary.LittleEndian.Uint32(e[8:])})
	}
	entry(cat[32:64], platform)
	// Section headers (0x90, the last 0x91), each followed by its entries and their
	// extensions (0x44), to the end of the catalog sector.
	for pos := 64; pos+32 <= len(cat); {
		hdr := cat[pos]
		if hdr != 0x90 && hdr != 0x91 {
			break
		}
		platform := cat[pos+1]
		count := int(binary.LittleEndian.Uint16(cat[pos+2:]))
		pos += 32
		for k := 0; k < count && pos+32 <= len(cat); pos += 32 {
			switch cat[pos] {
			case 0x88, 0x00:
				entry(cat[pos:pos+32], platform)
				k++
			case 0x44:
				// an extension of the previous entry
			default:
				return nil
			}
		}
		if hdr == 0x91 {
			break
		}
	}
	return nil
}

func (c *isoCore) size() int64 { return c.virtual }

func (c *isoCore) describe(info *Info) {
	info.FormatSpecific = &FormatSpecific{Type: ISO, Data: c.info}
}

func (c *isoCore) findings() []Finding { return c.finds }

// lookup: an ISO reads as raw data; the tail that rounds the file up to a sector is zeros.
func (c *isoCore) lookup(off int64) (segment, error) {
	if off >= c.fileSize {
		return segment{kind: KindZero, length: c.virtual - off, host: -1}, nil
	}
	return segment{kind: KindData, length: c.fileSize - off, r: c.r, off: off, host: off}, nil
}
