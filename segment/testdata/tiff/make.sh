#!/bin/sh
# Builds the TIFF and GeoTIFF fixtures of decode_tiff_test.go with GDAL (apt-get install gdal-bin
# python3-pyproj) from a 100×70 crop of a NEON frame (see SOURCE.md), and writes expected.json: each
# file's georeferenced centre converted to WGS84 by PROJ, the reference the Go conversion is tested
# against. Run from the repository root:  sh segment/testdata/tiff/make.sh
set -eu
here=segment/testdata/tiff
src=/work/shared/data/neon-tree-crowns/2019_BLAN_3_751000_4330000_image_crop.jpg
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The reference pixels: a PNG, decoded by Go's own decoder in the test.
gdal_translate -q -srcwin 300 420 100 70 -of PNG "$src" "$here/crop.png"
rm -f "$here/crop.png.aux.xml"
g() { # g NAME SRS ULX ULY PIXEL [creation options...]
	name=$1 srs=$2 ulx=$3 uly=$4 px=$5
	shift 5
	lry=$(echo "$uly - 70 * $px" | bc -l)
	lrx=$(echo "$ulx + 100 * $px" | bc -l)
	gdal_translate -q -of GTiff -a_srs "$srs" -a_ullr "$ulx" "$uly" "$lrx" "$lry" "$@" "$here/crop.png" "$here/$name.tif"
}
# UTM on WGS84 (north and south), NAD83, ETRS89; geographic WGS84; RD New; no georeferencing.
g strip-none-utm17n      EPSG:32617 751000 4330000 0.1 -co TILED=NO -co BLOCKYSIZE=16
g tile-lzw-pred-4326     EPSG:4326  -77.9 39.06 0.000001 -co TILED=YES -co BLOCKXSIZE=32 -co BLOCKYSIZE=32 -co COMPRESS=LZW -co PREDICTOR=2
g tile-deflate-planar-utm21s EPSG:32721 500000 8950000 0.3 -co TILED=YES -co BLOCKXSIZE=64 -co BLOCKYSIZE=32 -co COMPRESS=DEFLATE -co INTERLEAVE=BAND
g tile-jpeg-ycbcr-nad83  EPSG:26912 541000 4977000 0.1 -co TILED=YES -co BLOCKXSIZE=32 -co BLOCKYSIZE=32 -co COMPRESS=JPEG -co PHOTOMETRIC=YCBCR -co JPEG_QUALITY=95
g strip-jpeg-rgb-etrs89  EPSG:25831 453768 4626168 0.25 -co TILED=NO -co BLOCKYSIZE=32 -co COMPRESS=JPEG -co PHOTOMETRIC=RGB -co JPEG_QUALITY=95
g bigtiff-deflate-rd     EPSG:28992 127375 428250 0.25 -co BIGTIFF=YES -co TILED=YES -co BLOCKXSIZE=32 -co BLOCKYSIZE=32 -co COMPRESS=DEFLATE -co PREDICTOR=2
# RGBA with unassociated alpha (ExtraSamples 2), PackBits strips; alpha 0 in the left 10 columns.
/usr/bin/python3 -c '
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGBA")
a = im.getchannel("A").point(lambda v: 255)
a.paste(0, (0, 0, 10, 70))
im.putalpha(a)
im.save(sys.argv[2], compression="packbits")
' "$here/crop.png" "$here/strip-packbits-rgba-nogeo.tif"
gdal_translate -q -of GTiff -b 2 -co TILED=NO -co COMPRESS=LZW "$here/crop.png" "$here/strip-lzw-gray-nogeo.tif"
gdal_translate -q -of GTiff -ot UInt16 -srcwin 0 0 20 10 -co TILED=NO "$here/crop.png" "$here/uint16-refused.tif"
rm -f "$here"/*.aux.xml
/usr/bin/python3 - "$here" <<'PY'
import json, os, subprocess, sys
from pyproj import CRS, Transformer
here = sys.argv[1]
out = {}
for f in sorted(os.listdir(here)):
    if not f.endswith(".tif"):
        continue
    info = json.loads(subprocess.check_output(["gdalinfo", "-json", os.path.join(here, f)]))
    e = {"width": info["size"][0], "height": info["size"][1]}
    if "coordinateSystem" in info and info["coordinateSystem"].get("wkt"):
        gt = info["geoTransform"]
        cx = gt[0] + gt[1] * e["width"] / 2 + gt[2] * e["height"] / 2
        cy = gt[3] + gt[4] * e["width"] / 2 + gt[5] * e["height"] / 2
        crs = CRS.from_wkt(info["coordinateSystem"]["wkt"])
        lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(cx, cy)
        e.update({"epsg": crs.to_epsg(), "lat": lat, "lon": lon, "pixel_size_m": abs(gt[1]) if crs.is_projected else None})
    out[f] = e
json.dump(out, open(os.path.join(here, "expected.json"), "w"), indent=1, sort_keys=True)
PY
ls -l "$here"
