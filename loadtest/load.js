// The original project's scenario: ramp to 10 VUs and hold; 95% of requests use a small fixed
// set of sentences (cache hits once warm), the rest random shuffles of other sentences.
//   k6 run loadtest/load.js                         (30 s hold, the default)
//   k6 run -e DURATION=10m loadtest/load.js         (the long run)
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e SENTENCES=results/sentences.json loadtest/load.js
import { loadSentences, predict, shuffledWords } from './lib.js';
import { SharedArray } from 'k6/data';

const sentences = new SharedArray('sentences', loadSentences);
const FIXED = 10;

export const options = {
  stages: [
    { duration: '10s', target: 10 },
    { duration: __ENV.DURATION || '30s', target: 10 },
    { duration: '5s', target: 0 },
  ],
  thresholds: {
    http_req_duration: ['p(99)<2000'],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(95)', 'p(99)'],
};

export default function () {
  if (Math.random() < 0.95) {
    predict([sentences[Math.floor(Math.random() * Math.min(FIXED, sentences.length))]]);
  } else {
    const other = sentences[FIXED + Math.floor(Math.random() * Math.max(1, sentences.length - FIXED))] || sentences[0];
    predict([shuffledWords(other)]);
  }
}
