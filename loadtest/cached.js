// Every text is cached: requests draw from the first CACHED_SET sentences, which setup() warms.
//   k6 run -e VUS=32 -e TEXTS_PER_REQUEST=1 loadtest/cached.js
import { loadSentences, predict } from './lib.js';
import { SharedArray } from 'k6/data';

const sentences = new SharedArray('sentences', loadSentences);
const TEXTS = parseInt(__ENV.TEXTS_PER_REQUEST || '1', 10);
const SET = Math.min(parseInt(__ENV.CACHED_SET || '64', 10), sentences.length);

export const options = {
  scenarios: {
    cached: { executor: 'constant-vus', vus: parseInt(__ENV.VUS || '8', 10), duration: __ENV.DURATION || '20s' },
  },
  thresholds: { checks: ['rate>0.99'] },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(95)', 'p(99)'],
};

export function setup() {
  for (let start = 0; start < SET; start += 32) {
    const batch = [];
    for (let i = start; i < Math.min(start + 32, SET); i++) batch.push(sentences[i]);
    predict(batch);
  }
}

export default function () {
  const texts = [];
  for (let i = 0; i < TEXTS; i++) {
    texts.push(sentences[Math.floor(Math.random() * SET)]);
  }
  predict(texts);
}
