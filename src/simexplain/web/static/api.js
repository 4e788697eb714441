// The server's JSON API from the page: `api` (GET, or POST of JSON or a form; the server's
// {"error": ...} text, and the side of the image that failed, on the thrown Error),
// `errorText`, the text shown for any error, and `seenUrl`, the image a model saw.

export async function api(path, body, signal) {
  const options = { signal };
  if (body !== undefined) {
    options.method = "POST";
    if (body instanceof FormData) {
      options.body = body;
    } else {
      options.headers = { "Content-Type": "application/json" };
      options.body = JSON.stringify(body);
    }
  }
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
    error.side = data && data.side; // which image failed, when the server knows
    throw error;
  }
  return data;
}

export function errorText(error) {
  return String(error && error.message ? error.message : error);
}

// the URL of the part of a photo that the model saw (an explained side or a search hit: its
// `url` and `crop`, [top, left, bottom, right]), at most `maxSide` pixels long: what the map
// views draw, so that a face crop fills its panel however small it is in the photo
export function seenUrl(item, maxSide) {
  return `${item.url}?max_side=${maxSide}&crop=${item.crop.join(",")}`;
}
