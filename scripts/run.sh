#!/usr/bin/env bash
# run.sh: start glimpse's embedded image service for local use (`make run`): the Image API v2
# on LISTEN (127.0.0.1:9292), data and metadata in DATA_DIR (./var), every caller an admin.
# It prints how to upload a first image, then runs in the foreground until Ctrl-C.
set -euo pipefail

GLIMPSE=${GLIMPSE:-bin/glimpse}
LISTEN=${LISTEN:-127.0.0.1:9292}
DATA_DIR=${DATA_DIR:-./var}
URL=http://$LISTEN

cat <<MSG
glimpse: the Image API v2 on $URL (data in $DATA_DIR, --auth none: every caller is admin).

Upload a first image with curl:
  qemu-img create -f qcow2 first.qcow2 1G        # or any image you have
  id=\$(curl -s -X POST $URL/v2/images -H 'Content-Type: application/json' \\
        -d '{"name": "first", "disk_format": "qcow2", "container_format": "bare"}' |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -s -X PUT $URL/v2/images/\$id/file -H 'Content-Type: application/octet-stream' \\
        --data-binary @first.qcow2
  curl -s $URL/v2/images/\$id                     # status active, checksum, virtual_size
  curl -s -o back.qcow2 $URL/v2/images/\$id/file

or with the glance CLI (python3-glanceclient), which needs a token but not its value here:
  export OS_IMAGE_URL=$URL OS_AUTH_TOKEN=x
  glance image-create --name first --disk-format qcow2 --container-format bare --file first.qcow2
  glance image-list
  glance image-download --file back.qcow2 <ID>

Uploads are inspected as they stream: a qcow2 with a backing file, a vmdk naming a host
file, or content that is not its declared disk_format is refused with 400.
Stop with Ctrl-C.

MSG
exec "$GLIMPSE" serve --listen "$LISTEN" --data-dir "$DATA_DIR" --auth none
