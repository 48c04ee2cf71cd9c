// Shared by the k6 scenarios: loopback guard, sentences, request helper.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
// Load tests may only target this machine.
if (!/^http:\/\/(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(:\d+)?(\/|$)/.test(BASE_URL)) {
  throw new Error(`BASE_URL ${BASE_URL} is not a loopback address`);
}

// SENTENCES: a JSON array of strings (scripts/bench.py writes one from SST-2 dev); a few built-in ones otherwise.
export function loadSentences() {
  if (__ENV.SENTENCES) {
    return JSON.parse(open(__ENV.SENTENCES));
  }
  return [
    'it is a charming and often affecting journey .',
    'unflinchingly bleak and desperate',
    'allows us to hope that nolan is poised to embark a major career as a commercial yet inventive filmmaker .',
    'the acting , costumes , music , cinematography and sound are all astounding given the production \'s austere locales .',
    'it is slow -- very , very slow .',
    'a sometimes tedious film .',
    'or doing last year \'s taxes with your ex-wife .',
    'you do n\'t have to know about music to appreciate the film \'s easygoing blend of comedy and romance .',
    'in exactly 89 minutes , most of which passed as slowly as if i \'d been sitting naked on an igloo , formula 51 sank from quirky to jerky to utter turkey .',
    'the mesmerizing performances of the leads keep the film grounded and keep the audience riveted .',
    'it takes a strange kind of laziness to waste the talents of robert forster , anne meara , eugene levy , and reginald veljohnson all in the same movie .',
    'the film suffers from a lack of humor ( something needed to balance out the violence ) ...',
  ];
}

export function predict(texts, query = '') {
  const response = http.post(`${BASE_URL}/predict${query}`, JSON.stringify({ text: texts }), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'predict' },
  });
  check(response, {
    'status is 200': (r) => r.status === 200,
    'one prediction per text': (r) => r.status !== 200 || r.json('predictions').length === texts.length,
  });
  return response;
}

export function shuffledWords(sentence) {
  const words = sentence.split(' ');
  for (let i = words.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [words[i], words[j]] = [words[j], words[i]];
  }
  return words.join(' ');
}

// Three one-token words per text make it unique while adding the same few tokens everywhere
// (numbers would split into many word pieces and slow every design down unevenly).
const TAG_WORDS = ('table river green house window paper music stone light water garden chair ' +
  'market winter summer forest bridge letter orange silver yellow doctor island school animal ' +
  'button candle castle circle cotton dinner engine farmer finger flower friend ground hammer ' +
  'jacket kitten ladder lemon mirror monkey needle office pencil pepper pillow planet pocket ' +
  'rabbit rocket saddle shadow sister spider spring street sugar ticket tiger tomato tunnel ' +
  'valley wagon wallet wheel willow wizard zebra apple basket beach camera cloud desert eagle ' +
  'feather glass harbor honey lamp moon ocean piano queen ribbon salt sheep snow storm tower ' +
  'train violin whale wolf anchor arrow bottle cabin canvas coffee compass crystal').split(' ');

// Picks where this run's unique texts start (uniqueText's offset): RUN_OFFSET, else the clock. Call
// it in setup(), once per run, and hand the value to the VUs: init code runs once per VU, each at
// its own millisecond, and per-VU offsets made one VU's "new" texts repeat another's minutes into a run.
export function chooseRunOffset() {
  return parseInt(__ENV.RUN_OFFSET || `${Date.now() % 100000}`, 10) * 1000;
}

export function uniqueText(sentences, n, offset) {
  const W = TAG_WORDS.length;
  const t = offset + Math.floor(n / sentences.length);
  const tag = `${TAG_WORDS[t % W]} ${TAG_WORDS[Math.floor(t / W) % W]} ${TAG_WORDS[Math.floor(t / (W * W)) % W]}`;
  return `${sentences[n % sentences.length]} ${tag}`;
}

// Texts no request of this run sent before. Each iteration of a scenario owns `slots` numbers (the
// most texts it may send), each scenario ends its texts with its own marker (uniqueText's tags of
// two scenarios meet once one has sent enough), and every VU counts from the same run offset
// (chooseRunOffset). Without all three, "uncached" requests met earlier texts in the cache
// (docs/reliability.md, "Soak and memory").
export function freshTexts(sentences, runOffset, marker, count, slots) {
  const texts = [];
  for (let i = 0; i < count; i++) {
    const n = exec.scenario.iterationInTest * slots + i;
    texts.push(`${uniqueText(sentences, n, runOffset)}${marker}`);
  }
  return texts;
}
