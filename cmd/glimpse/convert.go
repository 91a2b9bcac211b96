package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"glimpse/convert"
	"glimpse/inspect"
)

// maxWorkers is qemu-img's bound for -m (coroutines); more would only wait for buffers.
const maxWorkers = 16

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert a disk image (like qemu-img convert) into raw, qcow2, vmdk, vhd (vpc), vhdx or vdi, or a single-disk OVA",
		ArgsUsage: "SRC DST",
		Flags: []cli.Flag{
			formatFlag(),
			&cli.StringFlag{Name: "O", Value: "raw", Usage: "output format `FMT`: raw, qcow2, vmdk, vhd (or vpc), vhdx, vdi"},
			&cli.StringSliceFlag{Name: "o", Usage: "output format options `KEY=VALUE,...` as qemu-img has them (compat=0.10, cluster_size=, compression_type=zstd, subformat=streamOptimized, adapter_type=, force_size=on, static=on, ...); repeatable"},
			&cli.BoolFlag{Name: "c", Usage: "compress the output (qcow2 clusters, streamOptimized vmdk grains)"},
			&cli.StringFlag{Name: "container", Usage: "wrap the output in a container: ova (a single-disk OVA; -O defaults to vmdk there)"},
			&cli.StringFlag{Name: "disk", Usage: "the disk of an OVA source to read (`NAME` of its member; the first disk by default)"},
			&cli.BoolFlag{Name: "p", Usage: "show a progress bar (when standard error is a terminal)"},
			&cli.BoolFlag{Name: "q", Usage: "quiet (the default; accepted for qemu-img's scripts)"},
			&cli.BoolFlag{Name: "W", Usage: "out-of-order writes (always on where the output allows; accepted for qemu-img's scripts)"},
			&cli.StringFlag{Name: "S", Usage: "zero runs of at least `SIZE` become holes (default 4k; 0 writes every byte, fully allocated)"},
			&cli.IntFlag{Name: "m", Usage: fmt.Sprintf("`N` parallel workers, 1 to %d (default: the number of CPUs)", maxWorkers)},
			&cli.StringFlag{Name: "t", Value: "unsafe", Usage: "output `CACHE` mode: unsafe (no flush, qemu-img's default) or writeback (flush before the rename)"},
			&cli.BoolFlag{Name: "allow-backing", Usage: "read backing files, data files and extents the image names (inside its directory only)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return cli.Exit("convert: need SRC and DST (- for standard output)", 1)
			}
			src, dst := c.Args().Get(0), c.Args().Get(1)
			container := strings.ToLower(c.String("container"))
			switch container {
			case "", "bare":
				container = ""
			case "ova":
			default:
				return cli.Exit(fmt.Sprintf("convert: --container %q: glimpse writes ova (or bare, the default)", c.String("container")), 1)
			}
			outName := c.String("O")
			if container == "ova" && !c.IsSet("O") {
				outName = "vmdk"
			}
			format, err := inspect.ParseFormat(outName)
			if err != nil {
				return cli.Exit("convert: -O: "+err.Error(), 1)
			}
			if format == inspect.OVA {
				return cli.Exit("convert: -O ova: use --container ova (with -O for the disk inside) or glimpse ova pack", 1)
			}
			var opt convert.Options
			if c.IsSet("S") {
				n, err := parseSize(c.String("S"))
				if err != nil || n%512 != 0 || n > convert.MaxSparseSize {
					return cli.Exit(fmt.Sprintf("convert: -S %q: invalid sparse size; valid sizes are multiples of 512 up to %d (0 writes every byte)", c.String("S"), convert.MaxSparseSize), 1)
				}
				opt.SparseSize = n
				opt.FullyAllocated = n == 0
			}
			if c.IsSet("m") {
				m := c.Int("m")
				if m < 1 || m > maxWorkers {
					return cli.Exit(fmt.Sprintf("convert: -m %d: the number of workers must be between 1 and %d", m, maxWorkers), 1)
				}
				opt.Workers = m
			}
			fopt, err := formatOptions(c)
			if err != nil {
				return cli.Exit("convert: -o: "+err.Error(), 1)
			}
			switch c.String("t") {
			case "unsafe":
			case "writeback", "writethrough", "none", "directsync":
				fopt.Sync = true
			default:
				return cli.Exit(fmt.Sprintf("convert: -t %q: cache mode must be unsafe, writeback, writethrough, none or directsync", c.String("t")), 1)
			}
			oopt, err := openOptions(c)
			if err != nil {
				return err
			}
			oopt.Disk = c.String("disk")
			if dst != "-" && same(src, dst) {
				return cli.Exit(fmt.Sprintf("convert: %s and %s are the same file", src, dst), 1)
			}
			if dst == "-" && isTerminalFunc(c.App.Writer) {
				return cli.Exit("convert: standard output is a terminal; redirect it or name a file", 1)
			}
			img, err := inspect.OpenFile(src, oopt)
			if err != nil {
				return cli.Exit("convert: "+err.Error(), 1)
			}
			defer img.Close()
			bar := startProgress(c.App.ErrWriter, c.Bool("p"), img.Size())
			if bar != nil {
				opt.Progress = bar
			}
			if container == "ova" {
				if dst == "-" {
					return cli.Exit("convert: --container ova writes a file (an OVA's manifest follows its disks), not standard output", 1)
				}
				name := baseName(dst)
				err = convert.Pack(c.Context, []convert.PackDisk{{Image: img, Name: name + "." + string(format)}}, dst,
					convert.PackOptions{Format: format, Disk: fopt, Convert: opt, Name: name})
			} else {
				var w convert.Writer
				w, err = convert.Create(format, dst, c.App.Writer, fopt)
				if err != nil {
					bar.Finish()
					return cli.Exit("convert: "+err.Error(), 1)
				}
				err = convert.Convert(c.Context, img, w, opt)
			}
			bar.Finish()
			if errors.Is(err, context.Canceled) {
				if dst == "-" {
					return cli.Exit("convert: interrupted: standard output holds part of the disk only", 1)
				}
				return cli.Exit("convert: interrupted: nothing was left under "+dst, 1)
			}
			if err != nil {
				return cli.Exit("convert: "+err.Error(), 1)
			}
			return nil
		},
	}
}

// same reports whether two names are the same existing file.
func same(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// parseSize reads a size as qemu-img does: a number with an optional binary suffix
// (k, M, G, T, P, E, case-insensitive, optionally followed by "iB" or "B").
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "iB"), "B")
	shift := 0
	if t != "" {
		switch strings.ToUpper(t[len(t)-1:]) {
		case "K":
			shift = 10
		case "M":
			shift = 20
		case "G":
			shift = 30
		case "T":
			shift = 40
		case "P":
			shift = 50
		case "E":
			shift = 60
		}
		if shift > 0 {
			t = strings.TrimSpace(t[:len(t)-1])
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: not a number with an optional k, M, G, T suffix", s)
	}
	if shift > 0 && n > (1<<63-1)>>shift || shift == 0 && n > 1<<63-1 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(n << shift), nil
}
