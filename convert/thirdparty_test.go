package convert

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// thirdParty lists the shared third-party samples: the readable ones, converted to raw by
// glimpse and then compared with the sample by qemu-img compare (which skips holes, so
// that empty disks of 127 GiB cost nothing), and the malformed or unreadable ones, which
// must fail with an error.
var thirdParty = []struct {
	rel        string
	qemuFormat string // qemu-img's -F ("" to probe); "-" when it cannot read it
	opt        inspect.OpenOptions
	with       []string // samples that must sit beside it (backing files, data files)
	member     string   // for an OVA: the disk inside, extracted for qemu-img
	fails      string   // the error glimpse must give, when it must fail
}{
	{rel: "dissect.hypervisor/disk/qcow2/basic.qcow2.gz"},
	{rel: "dissect.hypervisor/disk/qcow2/basic-zstd.qcow2.gz"},
	{rel: "dissect.hypervisor/disk/qcow2/snapshot.qcow2.gz"},
	{rel: "dissect.hypervisor/disk/qcow2/backing-chain-1.qcow2.gz", opt: inspect.OpenOptions{AllowBacking: true},
		with: []string{"dissect.hypervisor/disk/qcow2/backing-chain-2.qcow2.gz", "dissect.hypervisor/disk/qcow2/backing-chain-3.qcow2.gz"}},
	{rel: "dissect.hypervisor/disk/qcow2/data-file.qcow2.gz", opt: inspect.OpenOptions{AllowBacking: true},
		with: []string{"dissect.hypervisor/disk/qcow2/data-file.bin.gz"}},
	{rel: "dissect.hypervisor/disk/vdi/basic.vdi.gz"},
	{rel: "dissect.hypervisor/disk/vhd/dynamic.vhd.gz"},
	{rel: "dissect.hypervisor/disk/vhd/fixed.vhd.gz", qemuFormat: "vpc", opt: inspect.OpenOptions{Format: inspect.VHD}},
	{rel: "dissect.hypervisor/disk/vhdx/dynamic.vhdx.gz"},
	{rel: "dissect.hypervisor/disk/vhdx/fixed.vhdx.gz"},
	{rel: "qemu-iotests/iotest-dynamic-1G.vhdx.bz2"},
	{rel: "qemu-iotests/test-disk2vhd.vhdx.bz2"},
	{rel: "qemu-iotests/d2v-zerofilled.vhd.bz2"},
	{rel: "qemu-iotests/hyperv2012r2-dynamic.vhd.bz2"},
	{rel: "qemu-iotests/virtualpc-dynamic.vhd.bz2"},
	{rel: "qemu-iotests/iotest-version3.vmdk.bz2"},
	{rel: "qemu-iotests/grub_mbr.raw.bz2"},
	{rel: "cot/input.vmdk"},
	{rel: "cot/blank.vmdk"},
	{rel: "cot/ubuntu.2.0-disk1.vmdk"},
	{rel: "cot/input.iso", qemuFormat: "raw"},
	{rel: "iso9660/test.iso", qemuFormat: "raw"},
	{rel: "iso9660/test_rockridge.iso", qemuFormat: "raw"},
	{rel: "forklift-console-plugin/2nd_disk_v3.ova", member: "2nd_disk.vmdk"},

	{rel: "qemu-iotests/afl5.img.bz2", fails: "max_table_entries"},
	{rel: "qemu-iotests/afl9.vmdk.bz2", fails: "vmdk"},
	{rel: "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2", fails: "log"},
	{rel: "dissect.hypervisor/disk/vhdx/differencing.avhdx.gz", opt: inspect.OpenOptions{AllowBacking: true}, fails: "parent"},
	{rel: "dissect.hypervisor/disk/vmdk/sesparse.vmdk.gz", opt: inspect.OpenOptions{Format: inspect.VMDK}, fails: "vmdk"},
	{rel: "forklift-console-plugin/2nd_disk.ova", fails: "vmdk"},
}

func TestConvertThirdParty(t *testing.T) {
	qemutest.Need(t, "qemu-img", "tar")
	for _, s := range thirdParty {
		t.Run(filepath.Base(s.rel), func(t *testing.T) {
			t.Parallel()
			path := qemutest.ThirdParty(t, s.rel)
			for _, w := range s.with {
				if got := qemutest.ThirdParty(t, w); filepath.Dir(got) != filepath.Dir(path) {
					t.Fatalf("%s is not beside %s", got, path)
				}
			}
			out := filepath.Join(t.TempDir(), "out.raw")
			err := convertSample(path, out, s.opt)
			if s.fails != "" {
				if err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(s.fails)) {
					t.Fatalf("error %v, want one that mentions %q", err, s.fails)
				}
				noOutput(t, filepath.Dir(out))
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ref, refFormat := path, s.qemuFormat
			if s.member != "" {
				dir := t.TempDir()
				if out, err := exec.Command("tar", "-xf", path, "-C", dir, s.member).CombinedOutput(); err != nil {
					t.Fatalf("tar: %v: %s", err, out)
				}
				ref, refFormat = filepath.Join(dir, s.member), ""
			}
			args := []string{"compare", "-U", "-f", "raw"}
			if refFormat != "" {
				args = append(args, "-F", refFormat)
			}
			// From the sample's directory: qemu-img resolves data files from there.
			cmd := exec.Command("qemu-img", append(args, out, ref)...)
			cmd.Dir = filepath.Dir(ref)
			if got, err := cmd.CombinedOutput(); err != nil || string(got) != "Images are identical.\n" {
				t.Fatalf("qemu-img compare of glimpse's raw output with the sample: %q, %v", got, err)
			}
		})
	}
}

func convertSample(path, out string, opt inspect.OpenOptions) error {
	img, err := inspect.OpenFile(path, opt)
	if err != nil {
		return err
	}
	defer img.Close()
	w, err := CreateRaw(out, RawOptions{})
	if err != nil {
		return err
	}
	return Convert(context.Background(), img, w, Options{})
}
