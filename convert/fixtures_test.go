package convert

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// source is one input image of the conversion matrix.
type source struct {
	name string
	path string
	// format is what glimpse must open it as.
	format inspect.Format
	opt    inspect.OpenOptions // what glimpse opens it with (Format, AllowBacking)
	// qemuFormat is qemu-img's -f for the reference conversion ("" to probe).
	qemuFormat string
	// ref is what qemu-img converts for the reference when it differs from path (the
	// disk inside an OVA, which qemu-img cannot open in place).
	ref string
}

// baseSize is the fixtures' virtual size: not a multiple of any cluster or block size,
// so that every format has a partial last cluster.
const baseSize = 8<<20 + 64<<10 + 1536

// writeBase writes the content every fixture is converted from: data in the first and the
// last sector, across cluster boundaries, a long random run with zero blocks inside it
// (for the zero check), a compressible run, an all-0xff cluster, and holes between.
func writeBase(t testing.TB, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(baseSize); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	put := func(off int64, b []byte) {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	put(0, random(512))            // first sector
	put(baseSize-512, random(512)) // last sector
	put(64<<10-512, random(1024))  // straddles the first 64 KiB cluster boundary
	put(2<<20-4096, random(8192))  // straddles 2 MiB (vhd blocks, qcow2 2M clusters)
	run := random(640 << 10)       // a long data run, with a 64 KiB and a 4 KiB zero hole
	clear(run[128<<10 : 192<<10])
	clear(run[300<<10 : 304<<10])
	put(3<<20, run)
	text := []byte(strings.Repeat("glimpse compresses this line well. ", 30000))
	put(5<<20+4096, text[:1<<20]) // compressible, unaligned start
	ff := make([]byte, 64<<10)
	for i := range ff {
		ff[i] = 0xff
	}
	put(7<<20, ff)                         // an all-0xff cluster
	put(7<<20+(600<<10)+100, random(3000)) // odd offset and length
}

// iso builds an ISO 9660 image from a few files.
func buildISO(t testing.TB, dir string) string {
	t.Helper()
	qemutest.Need(t, "genisoimage")
	root := filepath.Join(dir, "isoroot")
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i, n := range []int{100, 70000, 300000} {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if err := os.WriteFile(filepath.Join(root, "sub", "f"+string(rune('a'+i))), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "disk.iso")
	qemutest.Run(t, "genisoimage", "-quiet", "-V", "GLIMPSE", "-o", p, root)
	return p
}

// ovfFor is a minimal OVF 1.0 descriptor for one streamOptimized disk.
func ovfFor(disk string, fileSize, capacity int64) string {
	return `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:href="` + disk + `" ovf:id="file1" ovf:size="` + itoa(fileSize) + `"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="` + itoa(capacity) + `" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="glimpse-test">
    <Info>A virtual machine</Info>
    <Name>glimpse-test</Name>
  </VirtualSystem>
</Envelope>
`
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// buildOVA packs an OVF descriptor and a streamOptimized vmdk into an OVA, .ovf first.
func buildOVA(t testing.TB, dir, vmdk string) string {
	t.Helper()
	qemutest.Need(t, "tar")
	st, err := os.Stat(vmdk)
	if err != nil {
		t.Fatal(err)
	}
	stage := filepath.Join(dir, "ova")
	if err := os.MkdirAll(stage, 0o755); err != nil {
		t.Fatal(err)
	}
	qemutest.CopyTo(t, vmdk, stage, "disk1.vmdk")
	ovf := ovfFor("disk1.vmdk", st.Size(), baseSize)
	if err := os.WriteFile(filepath.Join(stage, "vm.ovf"), []byte(ovf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "vm.ova")
	cmd := exec.Command("tar", "--format=ustar", "-cf", p, "-C", stage, "vm.ovf", "disk1.vmdk")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	return p
}

// variant is one qemu-img convert target of the matrix.
type variant struct {
	name   string
	format inspect.Format
	qemu   []string // qemu-img convert arguments between -O FMT and the paths
	file   string
	// probe is false where neither qemu-img nor glimpse can tell the format from the
	// content (fixed vhd: a footer only), so both are told.
	declare      bool
	allowBacking bool
}

var variants = []variant{
	{name: "qcow2", format: inspect.QCOW2, qemu: []string{"-O", "qcow2"}, file: "v3.qcow2"},
	{name: "qcow2-v2", format: inspect.QCOW2, qemu: []string{"-O", "qcow2", "-o", "compat=0.10"}, file: "v2.qcow2"},
	{name: "qcow2-512", format: inspect.QCOW2, qemu: []string{"-O", "qcow2", "-o", "cluster_size=512"}, file: "c512.qcow2"},
	{name: "qcow2-2M", format: inspect.QCOW2, qemu: []string{"-O", "qcow2", "-o", "cluster_size=2M"}, file: "c2m.qcow2"},
	{name: "qcow2-extl2", format: inspect.QCOW2, qemu: []string{"-O", "qcow2", "-o", "extended_l2=on"}, file: "extl2.qcow2"},
	{name: "qcow2-zlib", format: inspect.QCOW2, qemu: []string{"-O", "qcow2", "-c"}, file: "zlib.qcow2"},
	{name: "qcow2-zstd", format: inspect.QCOW2, qemu: []string{"-O", "qcow2", "-c", "-o", "compression_type=zstd"}, file: "zstd.qcow2"},
	{name: "vmdk-sparse", format: inspect.VMDK, qemu: []string{"-O", "vmdk"}, file: "sparse.vmdk"},
	{name: "vmdk-stream", format: inspect.VMDK, qemu: []string{"-O", "vmdk", "-o", "subformat=streamOptimized"}, file: "stream.vmdk"},
	{name: "vmdk-2gb", format: inspect.VMDK, qemu: []string{"-O", "vmdk", "-o", "subformat=twoGbMaxExtentSparse"}, file: "2gb.vmdk", allowBacking: true},
	{name: "vmdk-flat", format: inspect.VMDK, qemu: []string{"-O", "vmdk", "-o", "subformat=monolithicFlat"}, file: "flat.vmdk", allowBacking: true},
	{name: "vhd", format: inspect.VHD, qemu: []string{"-O", "vpc"}, file: "dynamic.vhd"},
	{name: "vhd-fixed", format: inspect.VHD, qemu: []string{"-O", "vpc", "-o", "subformat=fixed"}, file: "fixed.vhd", declare: true},
	{name: "vhdx", format: inspect.VHDX, qemu: []string{"-O", "vhdx"}, file: "dynamic.vhdx"},
	{name: "vhdx-1M", format: inspect.VHDX, qemu: []string{"-O", "vhdx", "-o", "block_size=1M"}, file: "b1m.vhdx"},
	{name: "vhdx-fixed", format: inspect.VHDX, qemu: []string{"-O", "vhdx", "-o", "subformat=fixed"}, file: "fixed.vhdx"},
	{name: "vdi", format: inspect.VDI, qemu: []string{"-O", "vdi"}, file: "dynamic.vdi"},
	{name: "vdi-static", format: inspect.VDI, qemu: []string{"-O", "vdi", "-o", "static=on"}, file: "static.vdi"},
}

// qemuName is qemu-img's name of a format.
func qemuName(f inspect.Format) string {
	if f == inspect.VHD {
		return "vpc"
	}
	return string(f)
}

// buildSources makes the matrix in dir: the base raw file, every variant qemu-img can
// make of it, images whose clusters qemu-io has changed in place (zero clusters,
// subclusters, a backing chain), an ISO and an OVA. formats limits it to those formats
// (nil: all).
func buildSources(t testing.TB, dir string, formats ...inspect.Format) []source {
	t.Helper()
	qemutest.Need(t, "qemu-img", "qemu-io")
	want := func(f inspect.Format) bool {
		if len(formats) == 0 {
			return true
		}
		for _, x := range formats {
			if x == f {
				return true
			}
		}
		return false
	}
	base := filepath.Join(dir, "base.raw")
	writeBase(t, base)
	var out []source
	if want(inspect.Raw) {
		out = append(out, source{name: "raw", path: base, format: inspect.Raw, qemuFormat: "raw"})
	}
	var jobs [][]string
	for _, v := range variants {
		if want(v.format) {
			jobs = append(jobs, append(append([]string{"convert", "-f", "raw"}, v.qemu...), base, filepath.Join(dir, v.file)))
		}
	}
	qemuParallel(t, jobs)
	for _, v := range variants {
		if !want(v.format) {
			continue
		}
		p := filepath.Join(dir, v.file)
		s := source{name: v.name, path: p, format: v.format, opt: inspect.OpenOptions{AllowBacking: v.allowBacking}}
		if v.declare {
			s.opt.Format = v.format
			s.qemuFormat = qemuName(v.format)
		}
		out = append(out, s)
	}
	if want(inspect.QCOW2) {
		// Zero clusters over data (v3), with and without unmapping, and a write that
		// leaves the cluster data-but-partly-overwritten.
		z := filepath.Join(dir, "zero.qcow2")
		qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", base, z)
		qemutest.IO(t, z, "qcow2", "write -z 3M 64k", "write -z -u 5M 128k", "write -P 0x5a 3149824 512", "write -z 7405568 1M")
		out = append(out, source{name: "qcow2-zero", path: z, format: inspect.QCOW2})
		// Subclusters: partial writes into unallocated clusters of an extended-L2 image.
		s := qemutest.Create(t, dir, "sub.qcow2", "qcow2", "4M", "extended_l2=on", "cluster_size=128k")
		qemutest.IO(t, s, "qcow2", "write -P 0x11 0 4k", "write -P 0x22 132k 8k", "write -z 1M 128k", "write -P 0x33 1114112 4k", "write -P 0x44 4193792 512")
		out = append(out, source{name: "qcow2-subclusters", path: s, format: inspect.QCOW2})
		// A backing chain: an overlay over a base, with writes over and beside the base's data.
		bq := filepath.Join(dir, "chain-base.qcow2")
		qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", base, bq)
		top := filepath.Join(dir, "chain-top.qcow2")
		qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "chain-base.qcow2", "-F", "qcow2", top)
		qemutest.IO(t, top, "qcow2", "write -P 0x77 0 4k", "write -P 0x78 3153920 64k", "write -z 7M 64k", "write -P 0x79 4M 4k")
		out = append(out, source{name: "qcow2-backing", path: top, format: inspect.QCOW2, opt: inspect.OpenOptions{AllowBacking: true}})
	}
	if want(inspect.ISO) {
		out = append(out, source{name: "iso", path: buildISO(t, dir), format: inspect.ISO, qemuFormat: "raw"})
	}
	if want(inspect.OVA) {
		vmdk := filepath.Join(dir, "inner.vmdk")
		qemutest.Img(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", base, vmdk)
		out = append(out, source{name: "ova", path: buildOVA(t, dir, vmdk), format: inspect.OVA, ref: vmdk})
	}
	return out
}

// qemuParallel runs qemu-img with each argument list, a few at a time: each run is
// mostly waiting (process start, small files).
func qemuParallel(t testing.TB, jobs [][]string) {
	t.Helper()
	qemutest.Need(t, "qemu-img")
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, args := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if _, err := qemutest.Output("qemu-img", args...); err != nil {
				errs[i] = fmt.Errorf("qemu-img %s: %w", strings.Join(args, " "), err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func openSource(t testing.TB, s source) inspect.Image {
	t.Helper()
	img, err := inspect.OpenFile(s.path, s.opt)
	if err != nil {
		t.Fatalf("%s: %v", s.name, err)
	}
	t.Cleanup(func() { img.Close() })
	if s.format != "" && img.Info().Format != s.format {
		t.Fatalf("%s: opened as %s, want %s", s.name, img.Info().Format, s.format)
	}
	return img
}

// reference is the SHA-256 and size of qemu-img convert -O raw of the source.
func reference(t testing.TB, s source) (string, int64) {
	t.Helper()
	if s.ref != "" {
		return qemutest.ConvertSHA256(t, s.ref, "")
	}
	return qemutest.ConvertSHA256(t, s.path, s.qemuFormat)
}
