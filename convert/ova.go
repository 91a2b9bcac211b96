package convert

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"glimpse/inspect"
)

// PackDisk is one disk to put into an OVA.
type PackDisk struct {
	// Image is the source disk; Pack converts it to PackOptions.Format.
	Image inspect.Image
	// Name is the disk's file name inside the archive ("disk1.vmdk" when empty). It must be
	// a plain local name.
	Name string
}

// PackOptions tune Pack.
type PackOptions struct {
	// Format is the disk format inside the archive; vmdk (streamOptimized) when empty, as
	// VMware and VirtualBox expect.
	Format inspect.Format
	// Disk holds the -o options and -c of the disk writer. For vmdk the default subformat is
	// streamOptimized.
	Disk FormatOptions
	// Convert tunes each disk's conversion.
	Convert Options
	// Name is the virtual system's name and the descriptor's base name ("vm" when empty).
	Name string
	// CPUs and MemoryMiB describe the minimal virtual hardware (1 and 1024 when zero).
	CPUs, MemoryMiB int
	// ModTime is the time stamped on every member; the Unix epoch when zero, so that the
	// same disks and options give the same archive.
	ModTime time.Time
	// TempDir is where the converted disks wait before they are archived; the output's
	// directory when empty.
	TempDir string
}

// ovfFormatURI is the ovf:format a descriptor gives each disk format.
var ovfFormatURI = map[string]string{
	"vmdk/streamOptimized":  "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
	"vmdk/monolithicSparse": "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse",
	"qcow2":                 "http://www.gnome.org/~markmc/qcow-image-format.html",
	"raw":                   "http://www.vmware.com/interfaces/specifications/vmdk.html#flat",
	"vhd":                   "http://technet.microsoft.com/en-us/library/bb676673.aspx",
	"vhdx":                  "http://technet.microsoft.com/en-us/library/hh831446.aspx",
	"vdi":                   "http://www.virtualbox.org/manual/ch05.html#vdidetails",
}

// Pack writes an OVA to out: the OVF 1.0 descriptor first, then the disks converted to
// opt.Format, then a manifest with the SHA-256 of every member. The archive is written
// beside out under a temporary name and renamed into place at the end; a failure leaves
// nothing under out.
func Pack(ctx context.Context, disks []PackDisk, out string, opt PackOptions) (err error) {
	if len(disks) == 0 {
		return errors.New("ova pack: no disks")
	}
	if opt.Format == "" {
		opt.Format = inspect.VMDK
	}
	if opt.Name == "" {
		opt.Name = "vm"
	}
	if opt.CPUs <= 0 {
		opt.CPUs = 1
	}
	if opt.MemoryMiB <= 0 {
		opt.MemoryMiB = 1024
	}
	if opt.ModTime.IsZero() {
		opt.ModTime = time.Unix(0, 0)
	}
	dopt := opt.Disk
	dopt.Options = map[string]string{}
	for k, v := range opt.Disk.Options {
		dopt.Options[k] = v
	}
	uriKey := string(opt.Format)
	if opt.Format == inspect.VMDK {
		if dopt.Options["subformat"] == "" {
			dopt.Options["subformat"] = "streamOptimized"
		}
		uriKey = "vmdk/" + dopt.Options["subformat"]
	}
	uri, ok := ovfFormatURI[uriKey]
	if !ok {
		return fmt.Errorf("ova pack: %s disks cannot go into an OVA", uriKey)
	}
	tmpDir := opt.TempDir
	if tmpDir == "" {
		tmpDir = filepath.Dir(out)
	}
	work, err := os.MkdirTemp(tmpDir, ".glimpse-ova-")
	if err != nil {
		return fmt.Errorf("ova pack: %w", err)
	}
	defer os.RemoveAll(work)

	// Convert every disk first: the tar header needs each member's size before its data.
	type packed struct {
		name, path string
		size       int64
		capacity   int64
	}
	var members []packed
	seen := map[string]bool{}
	for i, d := range disks {
		name := d.Name
		if name == "" {
			name = fmt.Sprintf("disk%d.%s", i+1, opt.Format)
		}
		if !filepath.IsLocal(name) || strings.ContainsAny(name, `/\`) || strings.EqualFold(path.Ext(name), ".ovf") || strings.EqualFold(path.Ext(name), ".mf") {
			return fmt.Errorf("ova pack: disk name %q must be a plain file name", name)
		}
		if seen[name] {
			return fmt.Errorf("ova pack: two disks are named %q", name)
		}
		seen[name] = true
		p := filepath.Join(work, fmt.Sprintf("%d-%s", i, name))
		w, err := Create(opt.Format, p, nil, dopt)
		if err != nil {
			return fmt.Errorf("ova pack: %s: %w", name, err)
		}
		if err := Convert(ctx, d.Image, w, opt.Convert); err != nil {
			return fmt.Errorf("ova pack: %s: %w", name, err)
		}
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("ova pack: %s: %w", name, err)
		}
		members = append(members, packed{name: name, path: p, size: st.Size(), capacity: d.Image.Size()})
	}

	base := strings.TrimSuffix(filepath.Base(out), filepath.Ext(out))
	if base == "" || strings.HasPrefix(base, ".") {
		base = opt.Name
	}
	ovfName := base + ".ovf"
	var files []ovfFile
	for _, m := range members {
		files = append(files, ovfFile{href: m.name, size: m.size, capacity: m.capacity, uri: uri})
	}
	ovf := buildOVF(opt, files)

	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".glimpse-")
	if err != nil {
		return fmt.Errorf("ova pack: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	tw := tar.NewWriter(tmp)
	var manifest strings.Builder
	add := func(name string, size int64, r io.Reader) error {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: opt.ModTime, Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("ova pack: %s: %w", name, err)
		}
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(tw, h), r); err != nil {
			return fmt.Errorf("ova pack: %s: %w", name, err)
		}
		fmt.Fprintf(&manifest, "SHA256(%s)= %s\n", name, hex.EncodeToString(h.Sum(nil)))
		return nil
	}
	if err = add(ovfName, int64(len(ovf)), strings.NewReader(ovf)); err != nil {
		return err
	}
	for _, m := range members {
		if err = ctx.Err(); err != nil {
			return err
		}
		f, ferr := os.Open(m.path)
		if ferr != nil {
			return fmt.Errorf("ova pack: %w", ferr)
		}
		err = add(m.name, m.size, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	mf := manifest.String()
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: base + ".mf", Size: int64(len(mf)), Mode: 0o644, ModTime: opt.ModTime, Format: tar.FormatUSTAR}
	if err = tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("ova pack: manifest: %w", err)
	}
	if _, err = io.WriteString(tw, mf); err != nil {
		return fmt.Errorf("ova pack: manifest: %w", err)
	}
	if err = tw.Close(); err != nil {
		return fmt.Errorf("ova pack: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("ova pack: %w", err)
	}
	if err = os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("ova pack: %w", err)
	}
	return nil
}

type ovfFile struct {
	href           string
	size, capacity int64
	uri            string
}

// buildOVF writes a minimal OVF 1.0 descriptor: References, DiskSection with each disk's
// capacity in bytes, and one VirtualSystem with CPUs, memory, a SCSI controller and the
// disks attached to it. CIM elements are in the schema's (alphabetical) order, which strict
// importers check.
func buildOVF(opt PackOptions, files []ovfFile) string {
	esc := func(s string) string {
		var b strings.Builder
		for _, r := range s {
			switch r {
			case '&':
				b.WriteString("&amp;")
			case '<':
				b.WriteString("&lt;")
			case '>':
				b.WriteString("&gt;")
			case '"':
				b.WriteString("&quot;")
			case '\'':
				b.WriteString("&apos;")
			default:
				b.WriteRune(r)
			}
		}
		return b.String()
	}
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="1.0">
  <References>
`)
	for i, f := range files {
		fmt.Fprintf(&b, "    <File ovf:href=\"%s\" ovf:id=\"file%d\" ovf:size=\"%d\"/>\n", esc(f.href), i+1, f.size)
	}
	b.WriteString("  </References>\n  <DiskSection>\n    <Info>Virtual disk information</Info>\n")
	for i, f := range files {
		fmt.Fprintf(&b, "    <Disk ovf:capacity=\"%d\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk%d\" ovf:fileRef=\"file%d\" ovf:format=\"%s\"/>\n",
			f.capacity, i+1, i+1, esc(f.uri))
	}
	name := esc(opt.Name)
	fmt.Fprintf(&b, `  </DiskSection>
  <VirtualSystem ovf:id="%s">
    <Info>A virtual machine</Info>
    <Name>%s</Name>
    <OperatingSystemSection ovf:id="1">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>%s</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-07</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>%d virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>%d</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>%dMB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>%d</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
`, name, name, name, opt.CPUs, opt.CPUs, opt.MemoryMiB, opt.MemoryMiB)
	for i := range files {
		fmt.Fprintf(&b, `      <Item>
        <rasd:AddressOnParent>%d</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk %d</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk%d</rasd:HostResource>
        <rasd:InstanceID>%d</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
`, i, i+1, i+1, 4+i)
	}
	b.WriteString("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n")
	return b.String()
}

// UnpackResult is what Unpack extracted and what inspecting the archive found.
type UnpackResult struct {
	Files   []string        // the paths written, in archive order
	Verdict inspect.Verdict // the archive's verdict, from one pass over its bytes
}

// Unpack extracts the regular members of the OVA read from r into dir, checking the
// archive as it reads it (with the stream inspector: member names, types, the manifest's
// digests, the disks inside). Only plain local names are extracted; anything else (links,
// devices, names with "..") is refused. When the verdict has findings, or anything fails,
// the files written are removed and the error says why.
func Unpack(ctx context.Context, r io.Reader, name, dir string) (res UnpackResult, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	st := inspect.NewStream(inspect.OpenOptions{Name: name, Format: inspect.OVA})
	defer func() {
		if err != nil {
			for _, f := range res.Files {
				os.Remove(f)
			}
			res.Files = nil
		}
	}()
	// The inspector sees every byte, in order; its rejections do not stop the copy here,
	// so that Close can give the complete verdict.
	tee := io.TeeReader(r, writerFunc(func(p []byte) (int, error) { st.Write(p); return len(p), nil }))
	tr := tar.NewReader(tee)
	for {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		if hdr.Typeflag != tar.TypeReg || !filepath.IsLocal(hdr.Name) {
			if hdr.Typeflag == tar.TypeXGlobalHeader {
				continue
			}
			return res, fmt.Errorf("%s: member %q (type %q) is not a plain file with a local name: not extracted", name, hdr.Name, string(hdr.Typeflag))
		}
		target := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return res, err
		}
		f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		res.Files = append(res.Files, target)
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return res, fmt.Errorf("%s: %s: %w", name, hdr.Name, err)
		}
	}
	// Whatever follows the end-of-archive blocks is part of the file too.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	res.Verdict = st.Close()
	if !res.Verdict.Safe() {
		return res, fmt.Errorf("%s: the archive is not safe: %s", name, joinFindings(res.Verdict.Findings))
	}
	return res, nil
}

func joinFindings(fs []inspect.Finding) string {
	var parts []string
	for _, f := range fs {
		parts = append(parts, f.String())
	}
	return strings.Join(parts, "; ")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
