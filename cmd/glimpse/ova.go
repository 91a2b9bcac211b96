package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"glimpse/convert"
	"glimpse/inspect"
)

func ovaCommand() *cli.Command {
	return &cli.Command{
		Name:  "ova",
		Usage: "pack disks into an OVA, or unpack one (checking its manifest as it reads)",
		Subcommands: []*cli.Command{
			{
				Name:      "pack",
				Usage:     "write an OVA: the OVF descriptor, the disks (streamOptimized vmdk by default), a SHA-256 manifest",
				ArgsUsage: "DISK... OUT.ova",
				Flags: []cli.Flag{
					formatFlag(),
					&cli.StringFlag{Name: "O", Value: "vmdk", Usage: "format of the disks inside (`FMT`)"},
					&cli.StringSliceFlag{Name: "o", Usage: "disk writer options (`KEY=VALUE,...`, as for convert)"},
					&cli.BoolFlag{Name: "c", Usage: "compress the disks (qcow2)"},
					&cli.StringFlag{Name: "name", Value: "vm", Usage: "the virtual system's `NAME`"},
					&cli.IntFlag{Name: "cpus", Value: 1, Usage: "virtual CPUs in the descriptor"},
					&cli.IntFlag{Name: "memory", Value: 1024, Usage: "memory in MiB in the descriptor"},
					&cli.BoolFlag{Name: "allow-backing", Usage: "read backing files the disks name (inside their directories only)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() < 2 {
						return cli.Exit("ova pack: need at least one DISK and OUT.ova", 1)
					}
					args := c.Args().Slice()
					out := args[len(args)-1]
					format, err := inspect.ParseFormat(c.String("O"))
					if err != nil {
						return cli.Exit("ova pack: -O: "+err.Error(), 1)
					}
					fopt, err := formatOptions(c)
					if err != nil {
						return cli.Exit("ova pack: "+err.Error(), 1)
					}
					oopt, err := openOptions(c)
					if err != nil {
						return err
					}
					var disks []convert.PackDisk
					seen := map[string]int{}
					for _, name := range args[:len(args)-1] {
						img, err := inspect.OpenFile(name, oopt)
						if err != nil {
							return cli.Exit("ova pack: "+err.Error(), 1)
						}
						defer img.Close()
						member := baseName(name)
						if seen[member]++; seen[member] > 1 {
							member = fmt.Sprintf("%s-%d", member, seen[member])
						}
						disks = append(disks, convert.PackDisk{Image: img, Name: member + "." + string(format)})
					}
					err = convert.Pack(c.Context, disks, out, convert.PackOptions{
						Format: format, Disk: fopt, Name: c.String("name"), CPUs: c.Int("cpus"), MemoryMiB: c.Int("memory"),
					})
					if err != nil {
						return cli.Exit(err.Error(), 1)
					}
					return nil
				},
			},
			{
				Name:      "unpack",
				Usage:     "extract an OVA's files into DIR, checking member names, types and the manifest as it reads",
				ArgsUsage: "OVA DIR",
				Action: func(c *cli.Context) error {
					if c.NArg() != 2 {
						return cli.Exit("ova unpack: need OVA and DIR", 1)
					}
					name, dir := c.Args().Get(0), c.Args().Get(1)
					f, err := os.Open(name)
					if err != nil {
						return cli.Exit("ova unpack: "+err.Error(), 1)
					}
					defer f.Close()
					res, err := convert.Unpack(c.Context, f, name, dir)
					if err != nil {
						return cli.Exit("ova unpack: "+err.Error(), exitUnsafe)
					}
					for _, p := range res.Files {
						fmt.Fprintln(c.App.Writer, p)
					}
					return nil
				},
			},
		},
	}
}
