package segment

import "math"

// GeoTIFF tags and keys read here (GeoTIFF 1.1, OGC 19-008r4).
const (
	tagModelPixelScale    = 33550
	tagModelTiepoint      = 33922
	tagModelTransform     = 34264
	tagGeoKeyDirectory    = 34735
	tagGeoDoubleParams    = 34736
	keyModelType          = 1024 // 1 projected, 2 geographic
	keyRasterType         = 1025 // 1 PixelIsArea, 2 PixelIsPoint
	keyGeographicType     = 2048
	keyGeodeticDatum      = 2050
	keyGeogAngularUnits   = 2054
	keyProjectedCSType    = 3072
	keyProjection         = 3074
	keyProjLinearUnits    = 3076
	userDefined           = 32767
	unitMetre             = 9001
	unitDegree            = 9102
	modelProjected        = 1
	modelGeographic       = 2
	rasterPixelIsPoint    = 2
	metresPerDegreeAtEqtr = 111_319.49 // WGS84 semi-major axis × π/180
)

// geoInfo is what a GeoTIFF says about where its image lies.
type geoInfo struct {
	// lat, lon of the image centre (WGS84 degrees); ok when the CRS is supported.
	lat, lon float64
	ok       bool
	// pixel is the ground size of a pixel in metres (0 when unknown).
	pixel float64
}

// geoKeys parses the GeoKeyDirectory into key → SHORT value (keys stored as doubles or
// strings are skipped, except those listed in doubles).
func (t *tiffFile) geoKeys() map[uint16]uint16 {
	dir := t.uints(tagGeoKeyDirectory)
	if len(dir) < 4 {
		return nil
	}
	n := int(dir[3])
	keys := make(map[uint16]uint16, n)
	for i := 0; i < n && 4+4*i+3 < len(dir); i++ {
		e := dir[4+4*i : 8+4*i]
		if e[1] == 0 && e[2] == 1 { // value stored in place
			keys[uint16(e[0])] = uint16(e[3])
		}
	}
	return keys
}

// geo returns the image's location and pixel size from its GeoTIFF tags. The location is
// the centre of the image. Supported CRSs: geographic WGS84 (and the datums within a couple
// of metres of it: NAD83, ETRS89, GDA94, GDA2020), UTM on those datums (EPSG 326xx, 327xx,
// 269xx, 258xx, or user-defined with a UTM projection code), and Amersfoort / RD New (EPSG
// 28992, converted with the RDNAPTRANS polynomial approximation, within about a metre).
// Other CRSs give a pixel size when their unit is the metre or degree, but no location.
func (t *tiffFile) geo() geoInfo {
	keys := t.geoKeys()
	if keys == nil {
		return geoInfo{}
	}
	// Raster → model: x = a*i + b*j + c, y = d*i + e*j + f.
	var a, b, c, d, e, f float64
	if m := t.doubles(tagModelTransform); len(m) >= 16 {
		a, b, c, d, e, f = m[0], m[1], m[3], m[4], m[5], m[7]
	} else {
		sc, tp := t.doubles(tagModelPixelScale), t.doubles(tagModelTiepoint)
		if len(sc) < 2 || len(tp) < 6 || sc[0] <= 0 || sc[1] <= 0 {
			return geoInfo{}
		}
		a, e = sc[0], -sc[1]
		c, f = tp[3]-tp[0]*sc[0], tp[4]+tp[1]*sc[1]
	}
	ci, cj := float64(t.w)/2, float64(t.h)/2
	if keys[keyRasterType] == rasterPixelIsPoint {
		ci, cj = ci-0.5, cj-0.5 // raster coordinates are pixel centres
	}
	x, y := a*ci+b*cj+c, d*ci+e*cj+f
	// Pixel size: square root of the area of a pixel in model units.
	area := math.Abs(a*e - b*d)
	if area == 0 || math.IsNaN(area) || math.IsInf(area, 0) {
		return geoInfo{}
	}
	var g geoInfo
	switch keys[keyModelType] {
	case modelGeographic:
		if u, ok := keys[keyGeogAngularUnits]; ok && u != unitDegree {
			return geoInfo{}
		}
		if x < -180 || x > 360 || y < -90 || y > 90 {
			return geoInfo{}
		}
		g.pixel = math.Sqrt(area) * metresPerDegreeAtEqtr * math.Sqrt(math.Cos(y*math.Pi/180))
		if wgs84Like(keys[keyGeographicType], keys[keyGeodeticDatum]) {
			g.lat, g.lon, g.ok = y, normLon(x), true
		}
	case modelProjected:
		if u, ok := keys[keyProjLinearUnits]; ok && u != unitMetre {
			return geoInfo{}
		}
		g.pixel = math.Sqrt(area)
		cs := int(keys[keyProjectedCSType])
		if cs == 28992 {
			g.lat, g.lon = rdToWGS84(x, y)
			g.ok = true
			break
		}
		zone, south, ok := utmZone(cs, int(keys[keyProjection]), keys)
		if ok {
			g.lat, g.lon = utmToLatLon(x, y, zone, south)
			g.ok = !math.IsNaN(g.lat) && !math.IsNaN(g.lon) && math.Abs(g.lat) <= 84.5
		}
	}
	return g
}

// wgs84Like reports whether a geographic CRS (or user-defined datum) is WGS84 or a datum
// within a couple of metres of it.
func wgs84Like(gcs, datum uint16) bool {
	switch gcs {
	case 4326, 4269, 4258, 4283, 7844, 4617, 4167:
		return true
	case userDefined:
		switch datum {
		case 6326, 6269, 6258, 6283, 1168, 6140, 6167:
			return true
		}
	}
	return false
}

// utmZone recognises UTM projected CRSs on WGS84-like datums: EPSG 32601-32660 (north),
// 32701-32760 (south), 26901-26923 (NAD83), 25828-25838 (ETRS89), and user-defined CRSs
// whose projection is a UTM zone (EPSG 16001-16060 north, 16101-16160 south).
func utmZone(cs, proj int, keys map[uint16]uint16) (zone int, south, ok bool) {
	switch {
	case cs >= 32601 && cs <= 32660:
		return cs - 32600, false, true
	case cs >= 32701 && cs <= 32760:
		return cs - 32700, true, true
	case cs >= 26901 && cs <= 26923:
		return cs - 26900, false, true
	case cs >= 25828 && cs <= 25838:
		return cs - 25800, false, true
	case cs == userDefined && wgs84Like(keys[keyGeographicType], keys[keyGeodeticDatum]):
		switch {
		case proj >= 16001 && proj <= 16060:
			return proj - 16000, false, true
		case proj >= 16101 && proj <= 16160:
			return proj - 16100, true, true
		}
	}
	return 0, false, false
}

func normLon(x float64) float64 {
	for x > 180 {
		x -= 360
	}
	return x
}

// utmToLatLon converts UTM easting and northing (metres) in zone to WGS84 latitude and
// longitude (degrees) with Krüger's series to third order in n (sub-millimetre within a zone).
func utmToLatLon(easting, northing float64, zone int, south bool) (lat, lon float64) {
	const (
		a  = 6378137.0
		f  = 1 / 298.257223563
		k0 = 0.9996
	)
	n := f / (2 - f)
	n2, n3 := n*n, n*n*n
	A := a / (1 + n) * (1 + n2/4 + n2*n2/64)
	beta := [3]float64{n/2 - 2*n2/3 + 37*n3/96, n2/48 + n3/15, 17 * n3 / 480}
	delta := [3]float64{2*n - 2*n2/3 - 2*n3, 7*n2/3 - 8*n3/5, 56 * n3 / 15}
	n0 := 0.0
	if south {
		n0 = 10_000_000
	}
	xi := (northing - n0) / (k0 * A)
	eta := (easting - 500_000) / (k0 * A)
	xi1, eta1 := xi, eta
	for j := 1; j <= 3; j++ {
		fj := float64(2 * j)
		xi1 -= beta[j-1] * math.Sin(fj*xi) * math.Cosh(fj*eta)
		eta1 -= beta[j-1] * math.Cos(fj*xi) * math.Sinh(fj*eta)
	}
	chi := math.Asin(math.Sin(xi1) / math.Cosh(eta1))
	phi := chi
	for j := 1; j <= 3; j++ {
		phi += delta[j-1] * math.Sin(float64(2*j)*chi)
	}
	lon0 := float64(zone*6 - 183)
	return phi * 180 / math.Pi, lon0 + math.Atan2(math.Sinh(eta1), math.Cos(xi1))*180/math.Pi
}

// rdToWGS84 converts Dutch RD New coordinates (EPSG 28992, metres) to WGS84 latitude and
// longitude with the published polynomial approximation (Schreutelkamp and Strang van Hees),
// which agrees with PROJ's Helmert transformation to about 0.3 m over the Netherlands.
func rdToWGS84(x, y float64) (lat, lon float64) {
	dx, dy := (x-155000)*1e-5, (y-463000)*1e-5
	type term struct {
		p, q int
		v    float64
	}
	k := []term{{0, 1, 3235.65389}, {2, 0, -32.58297}, {0, 2, -0.24750}, {2, 1, -0.84978}, {0, 3, -0.06550},
		{2, 2, -0.01709}, {1, 0, -0.00738}, {4, 0, 0.00530}, {2, 3, -0.00039}, {4, 1, 0.00033}, {1, 1, -0.00012}}
	l := []term{{1, 0, 5260.52916}, {1, 1, 105.94684}, {1, 2, 2.45656}, {3, 0, -0.81885}, {1, 3, 0.05594},
		{3, 1, -0.05607}, {0, 1, 0.01199}, {3, 2, -0.00256}, {1, 4, 0.00128}, {0, 2, 0.00022}, {2, 0, -0.00022}, {5, 0, 0.00026}}
	sum := func(ts []term) float64 {
		s := 0.0
		for _, t := range ts {
			s += t.v * math.Pow(dx, float64(t.p)) * math.Pow(dy, float64(t.q))
		}
		return s / 3600
	}
	return 52.15517440 + sum(k), 5.38720621 + sum(l)
}
